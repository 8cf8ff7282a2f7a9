"""The fleet runner's connection to the core: an IPC client that survives the daemon restarting.

One `CoreLink` per runner thread. Calls that cannot reach the core return None and are logged
once per outage (the runner keeps running its agents and reports again when the core is back);
refusals (OpError with another code) are raised, since they mean something is wrong with what
was asked.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from pdcore.client import Client, IpcUnavailable, Subscription
from pdcore.config import Config
from pdcore.errors import OpError

log = logging.getLogger("pd.fleet.link")


class CoreLink:
    def __init__(self, config: Config, timeout: float = 10.0) -> None:
        self.config = config
        self.client = Client(config, timeout=timeout, transport="ipc", connect_retry_s=1.0)
        self.down = False

    def call(self, action: str, **args: Any) -> dict | None:
        """Run an operation; None when the core cannot be reached."""
        try:
            result = self.client.call(action, **args)
        except OpError as err:
            if err.code != "unavailable" and not isinstance(err, IpcUnavailable):
                raise  # the core answered; a refused connection (its caps) is "unreachable" too
            if not self.down:
                log.warning("event=core.unreachable action=%s error=%r", action, err.message)
            self.down = True
            return None
        if self.down:
            log.info("event=core.reachable")
        self.down = False
        return result

    def fire(self, action: str, **args: Any) -> None:
        """Send a fire-and-forget operation; silently dropped when the core is away."""
        try:
            self.client.fire(action, **args)
        except OpError:
            self.down = True

    def close(self) -> None:
        self.client.close()


class Listener(threading.Thread):
    """Subscribes to channels on its own connection and queues each delivery as (tag, kind, delivery).

    It uses the SDK's subscription and reconnects with backoff when the daemon goes away, so a
    fleet keeps hearing its triggers across daemon restarts. `connected` says whether it is
    subscribed right now (a runner claims a fleet only while it can hear it); after a reconnect
    a (tag, "reconnected", None) item is queued, so the runner can catch up with the core
    (pub/sub does not replay what was published meanwhile).
    """

    def __init__(self, config: Config, patterns: list[str], inbox: queue.Queue, tag: str) -> None:
        super().__init__(name=f"pd-fleet-listener-{tag}", daemon=True)
        self.config = config
        self.patterns = patterns
        self.inbox = inbox
        self.tag = tag
        self.stopping = threading.Event()
        self.ready = threading.Event()  # subscribed at least once
        self.connected = threading.Event()

    def run(self) -> None:
        delay, first = 0.05, True
        while not self.stopping.is_set():
            try:
                subscription = Subscription(self.config, self.patterns, reconnect=False)
            except OpError:
                self.stopping.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self.connected.set()
            self.ready.set()
            if not first:
                self.inbox.put((self.tag, "reconnected", None))
            first = False
            try:
                while not self.stopping.is_set():
                    delivery = subscription.next_message(timeout=0.25)
                    if delivery is not None:
                        self.inbox.put((self.tag, "message", delivery))
            except (OpError, OSError):
                log.info("event=listener.disconnected tag=%s", self.tag)
            except Exception:  # noqa: BLE001 - a listener must never take the runner down
                log.exception("event=listener.failed tag=%s", self.tag)
            finally:
                self.connected.clear()
                subscription.close()

    def stop(self) -> None:
        self.stopping.set()
