"""The dashboard in a real browser (headless Chromium): it opens through a `pd dashboard`
one-time link (the cookie then carries every fetch and the event stream), every panel shows
the daemon's state, and it is live over SSE (a published message reaches the feed; a new
agent reaches its panel).

Needs `pip install -e '.[browser]'` and Chromium with its driver (Debian: `chromium
chromium-driver`); skipped without them."""

from __future__ import annotations

import shutil
import time

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[browser]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Chromium and chromedriver are not installed")

WAIT_S = 10.0


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def wait_for(driver, element_id: str, predicate, timeout: float = WAIT_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        value = text_of(driver, element_id)
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"#{element_id} never matched; it shows {value!r}"
        time.sleep(0.05)


def test_every_panel_shows_the_state_and_updates_live(fresh_daemon, browser):
    d = fresh_daemon
    sdk = d.client()
    sdk.port_claim(id="dash:web:main")
    agent = sdk.agent_register(id="dash-agent-1", name="builder")["agent"]["id"]
    session = sdk.session_start(agentId=agent, purpose="wire the dashboard")["session"]["id"]
    sdk.session_claim_files(id=session, files=["src/dash.py"])
    sdk.lock_acquire(name="dash-deploy", owner="dash-agent-1")
    sdk.tuple_out(fields=["task", "dash"])

    browser.get(f"http://127.0.0.1:{d.port}/")  # without the link: refused
    assert "unauthorized" in browser.page_source
    link = d.pd("dashboard", "--no-open", "-q")
    assert link.returncode == 0, link.stderr
    browser.get(link.stdout.strip())  # 303 to / with the cookie
    assert browser.current_url == f"http://127.0.0.1:{d.port}/"
    wait_for(browser, "status", lambda s: s.startswith("up "))
    expected = {"services": "dash:web:main", "agents": "dash-agent-1", "sessions": "wire the dashboard",
                "locks": "dash-deploy", "heat": "src/dash.py", "tuples": "task, dash"}
    for panel, shown in expected.items():
        wait_for(browser, panel, lambda s, shown=shown: shown in s)
        assert text_of(browser, f"count-{panel}") == "(1)"
    for empty in ("salvage", "fleet"):
        wait_for(browser, f"count-{empty}", lambda s: s == "(0)")

    sdk.msg_publish(channel="dash:news", payload={"hello": "browser"}, _reply=True)
    wait_for(browser, "feed", lambda s: "dash:news" in s and "browser" in s, timeout=5)

    sdk.agent_register(id="dash-agent-2", name="late")  # published on pd:agents
    wait_for(browser, "count-agents", lambda s: s == "(2)", timeout=4)
    assert "dash-agent-2" in text_of(browser, "agents")
