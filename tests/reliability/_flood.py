"""A hostile peer for the fairness tests: holds IPC connections and floods one of them.

    python -m tests.reliability._flood --ipc PATH --hold 64 --rate 5000 --seconds 30

Opens `--hold` connections to daemon.ipc (then one more, to see whether it is refused), prints
one JSON line `{"held": n, "extra": refusal-code-or-null}`, then sends `port.claim` requests on
the first connection at `--rate` frames/s (`--blast`: as fast as the socket takes them; rate 0
and no blast: it only holds them) while a thread reads and discards the replies, for
`--seconds` or until killed. Last line: `{"sent": frames}`.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

import msgpack

from pdcore import protocol as P


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def refusal(s: socket.socket) -> str | None:
    """The code of the REFUSE the daemon sent on `s` at once (None: it was accepted)."""
    try:
        s.sendall(P.encode(P.REQUEST, 1, {"action": "daemon.health"}))
    except OSError:
        pass  # refused and closed already: its REFUSE is still readable
    decoder = P.FrameDecoder()
    while True:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            return "closed"
        for item in decoder.feed(data):
            type_, _conv, body = item
            return msgpack.unpackb(body)["code"] if type_ == P.REFUSE else None


def drain(s: socket.socket) -> None:
    try:
        while s.recv(1 << 20):
            pass
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", required=True)
    ap.add_argument("--hold", type=int, default=1)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--blast", action="store_true")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    held = []
    for _ in range(args.hold):
        s = connect(args.ipc)
        if refusal(s) is not None:
            break
        held.append(s)
    extra = refusal(connect(args.ipc))
    print(json.dumps({"held": len(held), "extra": extra}), flush=True)
    if not held:
        return
    flood = held[0]
    flood.settimeout(None)
    threading.Thread(target=drain, args=(flood,), daemon=True).start()
    frames = [P.encode(P.REQUEST, n + 2, {"action": "port.claim", "id": "fair:flood"}) for n in range(1000)]
    sent = 0
    deadline = time.monotonic() + args.seconds
    tick = 0.01
    per_tick = max(1, int(args.rate * tick))
    next_at = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if not args.rate and not args.blast:
                time.sleep(0.05)
            elif args.rate:
                flood.sendall(b"".join(frames[:per_tick]))
                sent += per_tick
                next_at += tick
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            else:
                flood.sendall(b"".join(frames))
                sent += len(frames)
    except OSError:
        pass
    print(json.dumps({"sent": sent}), flush=True)


if __name__ == "__main__":
    main()
