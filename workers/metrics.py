"""`GET /metrics?format=prometheus`: the daemon.metrics result in the Prometheus text format.

The core's result is `{uptime, counters: {...}, gauges: {...}, store: {...}, ...}`. Counters
become `pd_<name>_total` (type counter), gauges `pd_<name>`, uptime `pd_uptime_ms`; every
other number, nested or not, becomes a gauge named by its path (`store.commits` ->
`pd_store_commits`). Non-numbers are left out.
"""

from __future__ import annotations

import math
import re
from typing import Any

from falcon.asgi import Request, Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BAD = re.compile(r"[^a-zA-Z0-9_]")
_PREFIX = {"uptime": ("uptime_ms",), "gauges": ()}  # gauges are named by themselves
_HELP = {
    "uptime": "Milliseconds since the core started.",
    "timers": "Deadlines waiting in the core's timer structure.",
}


def metric_name(*parts: str) -> str:
    name = "_".join(_BAD.sub("_", p).strip("_") for p in parts if p)
    name = re.sub(r"_+", "_", name)
    return f"pd_{name}" if name else "pd"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return value
    return None


def _samples(prefix: tuple[str, ...], value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            _samples(prefix + (str(key),), value[key], out)
        return
    number = _number(value)
    if number is not None:
        out.append((metric_name(*prefix), number))


def render_prometheus(result: dict) -> str:
    """The text exposition of a daemon.metrics result."""
    lines: list[str] = []
    seen: set[str] = set()

    def emit(name: str, kind: str, value: Any, help_text: str) -> None:
        if name in seen:
            return
        seen.add(name)
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {_format(value)}")

    for key in sorted(result, key=str):
        value = result[key]
        if key == "success":
            continue
        samples: list[tuple[str, Any]] = []
        if key == "counters" and isinstance(value, dict):
            _samples((), value, samples)
            for name, number in samples:
                emit(f"{name}_total", "counter", number, f"Port Daddy counter {name[3:]}.")
            continue
        _samples(_PREFIX.get(str(key), (str(key),)), value, samples)
        for name, number in samples:
            emit(name, "gauge", number, _HELP.get(str(key), f"Port Daddy {name[3:].replace('_', ' ')}."))
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


def metrics_renderer(req: Request, resp: Response, result: dict) -> bool:
    """Renderer for daemon.metrics: Prometheus text when asked, else the default JSON."""
    if (req.get_param("format") or "").lower() not in ("prometheus", "prom", "text"):
        return False
    resp.content_type = CONTENT_TYPE
    resp.text = render_prometheus(result)
    return True
