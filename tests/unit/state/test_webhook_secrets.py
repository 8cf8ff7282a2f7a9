"""Webhook secrets sealed at rest: never in state.db or its WAL in plain form, plaintext rows of
older daemons sealed on load, a secret that does not open never yields an unsigned delivery."""

import hashlib
import hmac
import json
import logging
import os
import uuid

import pytest

from pdcore.state import State
from pdcore.state.webhooks import SIGNATURE_HEADER, open_secret, seal_secret
from pdcore.store import Store

URL = "https://hooks.example.com/pd"


class FakeTransport:
    """Records every POST and answers 200."""

    def __init__(self):
        self.calls = []

    def __call__(self, url, body, headers, timeout, allow):
        self.calls.append({"url": url, "body": body, "headers": headers})
        return 200, "ok"


def transport(h) -> FakeTransport:
    t = h.state.webhooks.transport = FakeTransport()
    return t


def a_secret(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def expected_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def on_disk(h) -> bytes:
    """The bytes of state.db and its -wal file, as they are now (after committing)."""
    h.store.commit()
    out = b""
    for path in (str(h.config.db_path), str(h.config.db_path) + "-wal"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                out += f.read()
    return out


def stored(h, hook_id: str) -> tuple:
    return h.store.read_one("SELECT secret, typeof(secret) FROM webhooks WHERE id = ?", (hook_id,))


def fire(h, event: str = "lock.acquire") -> None:
    h.state.webhooks.on_event(h.ctx(), event, {"owner": "a"}, target="db")
    h.advance(0)


def deliveries(h, hook_id: str) -> list[dict]:
    return h.state.webhooks.deliveries(h.ctx(), id=hook_id, limit=50)["deliveries"]


def insert_plaintext_row(h, hook_id: str, secret: str) -> None:
    """A row as a daemon from before sealing wrote it: the secret bound as text."""
    h.store.write(
        "INSERT INTO webhooks (id, url, secret, events, filter_pattern, active, metadata, created_at, updated_at, "
        "last_triggered, success_count, failure_count) VALUES (?,?,?,?,NULL,1,?,?,?,NULL,0,0)",
        (hook_id, URL, secret, json.dumps(["lock.acquire"]), json.dumps({"team": "x" * 200}), h.clock.now,
         h.clock.now))
    h.store.commit()


def reopen_without_secure_delete(h) -> None:
    """`harness.reopen()` on a connection where SQLite would leave freed cells as they were (the
    default of many builds), to show that sealing old rows zeroes their plaintext anyway."""
    h.store.commit()
    h.store.close()
    h.store = Store(h.config.db_path)
    h.store.db.execute("PRAGMA secure_delete = 0")
    h.store.migrate()
    h.state = State(h.store, h.config, deliver=lambda ch, msg: h.delivered.append((ch, msg)), clock=h.clock)
    h.state.load()


def test_secret_is_absent_from_the_database_files_after_register_and_update(harness):
    first, second = a_secret("registered"), a_secret("updated")
    t = transport(harness)
    hook = harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=first)
    assert stored(harness, hook["id"])[1] == "blob"
    assert first.encode() not in on_disk(harness)
    harness.state.webhooks.update(harness.ctx(), id=hook["id"], secret=second)
    data = on_disk(harness)
    assert first.encode() not in data and second.encode() not in data
    fire(harness)
    (call,) = t.calls
    assert call["headers"][SIGNATURE_HEADER] == expected_signature(call["body"], second)


def test_replies_never_include_the_secret(harness):
    secret = a_secret("reply")
    ops = harness.state.webhooks
    hook = ops.register(harness.ctx(), url=URL, secret=secret)
    replies = [hook, ops.get(harness.ctx(), id=hook["id"]), ops.list(harness.ctx()),
               ops.update(harness.ctx(), id=hook["id"], active=False)]
    for reply in replies:
        assert secret not in json.dumps(reply)
    assert replies[1]["webhook"]["hasSecret"] is True and replies[1]["webhook"]["secretError"] is None


def test_sealed_secret_opens_only_for_its_own_webhook(harness):
    ops = harness.state.webhooks
    a = ops.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=a_secret("a"))
    b = ops.register(harness.ctx(), url=URL + "/b", events=["lock.acquire"], secret=a_secret("b"))
    harness.store.write("UPDATE webhooks SET secret = (SELECT secret FROM webhooks WHERE id = ?) WHERE id = ?",
                        (a["id"], b["id"]))
    harness.reopen()
    assert harness.state.webhooks.hooks[a["id"]].secret is not None
    got = harness.state.webhooks.get(harness.ctx(), id=b["id"])["webhook"]
    assert got["hasSecret"] is True and "cannot be opened" in got["secretError"]


def test_plaintext_rows_from_an_older_daemon_are_sealed_on_load_once(harness):
    legacy = {uuid.uuid4().hex: a_secret("legacy") for _ in range(5)}
    for hook_id, secret in legacy.items():
        insert_plaintext_row(harness, hook_id, secret)
    reopen_without_secure_delete(harness)
    sealed = {hook_id: stored(harness, hook_id) for hook_id in legacy}
    for hook_id, secret in legacy.items():
        assert sealed[hook_id][1] == "blob" and secret.encode() not in sealed[hook_id][0]
    assert harness.store.db.execute("PRAGMA secure_delete").fetchone()[0] == 0  # put back as it was
    harness.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # load committed: copy the WAL into state.db
    with open(harness.config.db_path, "rb") as f:
        data = f.read()
    assert not [s for s in legacy.values() if s.encode() in data]  # the old plaintext cells were zeroed
    t = transport(harness)
    fire(harness)
    body = t.calls[0]["body"]  # the same event, so the same body for every hook
    assert all(call["body"] == body for call in t.calls)
    assert sorted(call["headers"][SIGNATURE_HEADER] for call in t.calls) == \
        sorted(expected_signature(body, secret) for secret in legacy.values())
    harness.reopen()  # sealed rows are left as they are
    assert {hook_id: stored(harness, hook_id) for hook_id in legacy} == sealed
    assert {hook_id: harness.state.webhooks.hooks[hook_id].secret for hook_id in legacy} == legacy


def test_empty_plaintext_secret_is_no_secret(harness):
    hook_id = uuid.uuid4().hex
    insert_plaintext_row(harness, hook_id, "")
    harness.reopen()
    assert stored(harness, hook_id) == (None, "null")
    t = transport(harness)
    fire(harness)
    assert SIGNATURE_HEADER not in t.calls[0]["headers"]


def _flip_last_byte(sealed: bytes) -> bytes:
    return sealed[:-1] + bytes([sealed[-1] ^ 1])


@pytest.mark.parametrize("tamper", [
    _flip_last_byte,
    lambda sealed: sealed[:20],  # truncated
    lambda sealed: b"\x09" + sealed[1:],  # unknown version
    lambda sealed: b"",
], ids=["flipped", "truncated", "version", "empty"])
def test_tampered_secret_does_not_crash_load_and_never_yields_an_unsigned_delivery(harness, caplog, tamper):
    secret = a_secret("tampered")
    hook = harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=secret)
    harness.store.write("UPDATE webhooks SET secret = ? WHERE id = ?", (tamper(stored(harness, hook["id"])[0]),
                                                                       hook["id"]))
    with caplog.at_level(logging.ERROR, logger="pd.webhooks"):
        harness.reopen()
    assert f"event=webhook.secret_unreadable id={hook['id']}" in caplog.text and secret not in caplog.text
    ops = harness.state.webhooks
    got = ops.get(harness.ctx(), id=hook["id"])["webhook"]
    assert got["active"] is True and got["hasSecret"] is True and "cannot be opened" in got["secretError"]
    t = transport(harness)
    fire(harness)
    harness.advance(3_600_000)  # no retry ever sends it either
    assert t.calls == []
    (d,) = deliveries(harness, hook["id"])
    assert d["status"] == "failed" and d["nextAttemptAt"] is None and "not sent unsigned" in d["error"]
    assert ops.get(harness.ctx(), id=hook["id"])["webhook"]["failureCount"] == 1
    result = ops.test(harness.ctx(), id=hook["id"])
    assert result["delivered"] is False and "cannot be opened" in result["error"] and t.calls == []
    # an update that does not touch the secret keeps it as stored; a new secret mends the hook
    ops.update(harness.ctx(), id=hook["id"], events=["lock.*"])
    harness.reopen()
    assert harness.state.webhooks.hooks[hook["id"]].secret_error is not None
    fresh = a_secret("mended")
    harness.state.webhooks.update(harness.ctx(), id=hook["id"], secret=fresh)
    t = transport(harness)
    fire(harness)
    (call,) = t.calls
    assert call["headers"][SIGNATURE_HEADER] == expected_signature(call["body"], fresh)


def test_a_pending_delivery_of_an_unreadable_hook_fails_after_restart(harness):
    hook = harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=a_secret("p"))
    harness.state.webhooks.on_event(harness.ctx(), "lock.acquire", {}, target="db")  # queued, not yet sent
    harness.store.write("UPDATE webhooks SET secret = ? WHERE id = ?",
                        (_flip_last_byte(stored(harness, hook["id"])[0]), hook["id"]))
    harness.reopen()
    t = transport(harness)
    harness.advance(0)
    assert t.calls == []
    (d,) = deliveries(harness, hook["id"])
    assert d["status"] == "failed" and "cannot be opened" in d["error"]


def test_another_master_key_leaves_hooks_unable_to_sign(harness):
    hook = harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=a_secret("k"))
    harness.store.commit()
    key_path = harness.config.key_path
    os.chmod(key_path, 0o600)
    with open(key_path, "wb") as f:
        f.write(os.urandom(32))
    harness.reopen()
    t = transport(harness)
    fire(harness)
    assert t.calls == [] and deliveries(harness, hook["id"])[0]["status"] == "failed"


def test_signatures_after_a_restart_are_identical(harness):
    secret = a_secret("restart")
    hook = harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=secret)
    before = transport(harness)
    fire(harness)
    harness.reopen()
    after = transport(harness)
    fire(harness)
    (b,), (a,) = before.calls, after.calls
    assert a["body"] == b["body"]  # same event at the same (fake) time
    assert a["headers"][SIGNATURE_HEADER] == b["headers"][SIGNATURE_HEADER] == expected_signature(b["body"], secret)
    assert [d["status"] for d in deliveries(harness, hook["id"])] == ["delivered", "delivered"]


def test_sealing_is_fresh_each_time_and_bound_to_the_id(harness):
    cipher = harness.state.notes.cipher
    one, two = seal_secret(cipher, "w1", "s"), seal_secret(cipher, "w1", "s")
    assert one != two and one[:1] == two[:1] == b"\x01"
    assert open_secret(cipher, "w1", one) == "s" and open_secret(cipher, "w2", one) is None


def test_missing_key_with_sealed_webhook_secrets_is_never_regenerated(harness):
    from pdcore.crypto import MasterKeyError

    harness.state.webhooks.register(harness.ctx(), url=URL, events=["lock.acquire"], secret=a_secret("k"))
    harness.store.commit()
    os.unlink(harness.config.key_path)
    with pytest.raises(MasterKeyError, match="webhook secrets"):
        harness.reopen()
    assert not os.path.exists(harness.config.key_path)
