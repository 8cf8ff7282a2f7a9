"""`python -m fleet`: the daemon-managed fleet runner, the supervisor's third child.

It runs the fleets registered with `POST /fleet/register` (`pd fleet up --detach`) and the
agents spawned with `POST /spawn`, until SIGTERM/SIGINT; then it stops every run (SIGTERM,
SIGKILL after fleet_kill_grace_ms) and tells the core. See fleet/service.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from fleet.service import FleetService
from pdcore.config import load_config_or_exit
from pdcore.paths import watch_supervisor


def main() -> int:
    logging.basicConfig(level=os.environ.get("PORT_DADDY_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    config = load_config_or_exit()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch_supervisor(stop.set, "fleet")
    logging.getLogger("pd.fleet").info("event=fleet_runner.start pid=%d home=%s", os.getpid(), config.home)
    FleetService(config).run(stop)
    logging.getLogger("pd.fleet").info("event=fleet_runner.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
