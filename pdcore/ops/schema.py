"""The shape of a catalogue entry and the argument validators built from it.

An operation is declared once as an `Op`: its name, arguments (types, bounds, required),
reply fields, durability, whether it may be sent fire-and-forget, its error codes, the HTTP
routes and CLI command that reach it. Validation is compiled once per op into a closure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdcore.errors import CODES_37, OpError

NAME_RE = re.compile(r"^[A-Za-z0-9._:/@*\-]{1,200}$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
IDENTITY_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}(?::[A-Za-z0-9._\-]{1,64}){0,2}$")
PATTERN_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._\-]{0,64}\*?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# An "int" argument fits a signed 64-bit integer whatever its declared bounds: that is what
# SQLite stores and MessagePack's signed range carries, so a larger number is refused here, as
# bad input, instead of overflowing deep inside a handler or the database.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

# dict, list and any arguments nest at most this deep: a value nested near the interpreter's
# recursion limit (~1000) is accepted by a parser once but breaks every reader of it later
# (json in a thread, the daemon's own json.dumps), so it is refused as bad input.
MAX_NESTING = 64

# Purposes and other free texts: 3.7 accepted purposes of many KiB (a 9,000-character purpose
# must work); still bounded, so one request cannot store an unbounded string.
PURPOSE_MAX = 16_384
# In team mode (docs/team.md), a write whose change this host made but whose acknowledgement by
# the team the link dropped: it succeeded and is published on reconnect; present only then.
TEAM_PENDING = {"teamPending": "bool"}

ARG_TYPES = ("str", "text", "name", "identity", "idpattern", "int", "float", "bool", "dict", "list", "any")


def setting_default(name: str) -> Any:
    """The default of a Config setting (a maximum declared by an argument's `max_setting`)."""
    from pdcore.config import Config

    for f in dataclasses.fields(Config):
        if f.name == name:
            return f.default
    raise ValueError(f"no setting {name!r} in Config")


def limit_arg(default: int | None = None, setting: str | None = None, max: int | None = None,
              doc: str = "", where: str = "query") -> Arg:
    """The `limit` of a list op: at most `max` (or the setting `setting`) items; above it is refused
    (400 naming limit and the maximum), never cut silently. Every list op declares its limit so."""
    if (setting is None) == (max is None):
        raise ValueError("a limit needs exactly one of max or setting")
    return Arg("limit", "int", default=default, min=1, max=max, max_setting=setting, where=where, doc=doc)


def check_identity(value: str, field_name: str = "id") -> str:
    """Validate `project[:stack[:context]]`, each segment 1-64 of [A-Za-z0-9._-]."""
    if isinstance(value, str) and IDENTITY_RE.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise OpError("invalid_identity", f"{field_name} must be a string like project:stack:context", field_name)
    raise OpError(
        "invalid_identity",
        f"{field_name} must be project[:stack[:context]], each segment 1-64 characters of A-Z a-z 0-9 . _ -",
        field_name,
    )


def is_pattern(name: str) -> bool:
    """A channel (or subscription) name with `*` or `?` is a shell-style pattern, not a name."""
    return "*" in name or "?" in name


def check_identity_pattern(value: str, field_name: str = "pattern") -> str:
    """Validate an identity or a pattern using `*` as a whole segment or a segment suffix."""
    if not isinstance(value, str):
        raise OpError("invalid_pattern", f"{field_name} must be a string", field_name)
    parts = value.split(":")
    if len(parts) > 3 or not all(p and PATTERN_SEGMENT_RE.fullmatch(p) for p in parts):
        raise OpError(
            "invalid_pattern",
            f"{field_name} must be an identity where a segment may be * or end in * (myapp:*, my*)",
            field_name,
        )
    return value


@dataclass(frozen=True)
class Arg:
    """One argument of an operation."""

    name: str
    type: str = "str"
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    choices: tuple | None = None
    doc: str = ""
    where: str = "body"  # body | path | query: where the HTTP front door finds it
    # The Config setting that holds the maximum (a list's largest `limit`): the core refuses above
    # the configured value; `max` is the setting's default, for the docs and schemas.
    max_setting: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ARG_TYPES:
            raise ValueError(f"unknown arg type {self.type!r} for {self.name}")
        if self.max_setting is not None:
            object.__setattr__(self, "max", setting_default(self.max_setting))


REQUEST_ID_MAX = 128
REQUEST_ID = Arg("requestId", "str", min=1, max_len=REQUEST_ID_MAX,
                 doc="the caller's id of this take (1-128 characters, e.g. a UUID): a repeat with the same id "
                     "returns the same result instead of taking again (the SDK sets one and repeats after a lost reply)")


@dataclass(frozen=True)
class Code37:
    """On one 3.7 route: the `code` 3.7 answered for one of ours (and its status, when it differed)."""

    ours: str
    code: str
    status: int | None = None


@dataclass(frozen=True)
class Route:
    """An HTTP route reaching an operation. `path` uses Falcon's `{param}` templates.

    `v37`: Port Daddy 3.7 had this route, so its failures carry 3.7's `code` (errors.CODES_37,
    then `codes37`) and our own word in `reason` (SPEC.md conventions).
    """

    method: str
    path: str
    status: int = 200
    v37: bool = False
    codes37: tuple[Code37, ...] = ()

    def code37(self, ours: str) -> tuple[str, int | None] | None:
        """3.7's (code, status or None) for our code on this route; None off 3.7 routes or without a word."""
        if not self.v37:
            return None
        for entry in self.codes37:
            if entry.ours == ours:
                return entry.code, entry.status
        code = CODES_37.get(ours)
        return (code, None) if code is not None else None


@dataclass(frozen=True)
class Op:
    """One operation of the catalogue."""

    name: str
    handler: str  # "<primitive>.<method>" on the core's State
    summary: str
    args: tuple[Arg, ...] = ()
    reply: dict[str, str] = field(default_factory=dict)
    durable: bool = False
    fire_and_forget: bool = False
    errors: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    cli: tuple[str, ...] = ()  # CLI command paths, e.g. ("claim",) or ("session files claim",)
    parks: bool = False  # may wait in the core (wait/long-poll)
    internal: bool = False  # reachable over IPC only by design (documented why)
    # The argument naming the acting agent besides the caller's agentId (a lock's owner, a
    # tuple's writtenBy, a message's sender): the handler attributes the act to it, so the
    # arbiter's overboard gate (strict mode) judges it too.
    actor: str | None = None
    # Its body's `agentId` names the agent the op is about (a fleet runner reporting a run of
    # that agent), not the caller: it does not become ctx.agent_id, like an agentId path field.
    subject_agent: bool = False
    # Not durable, yet a write other agents see (a publish, a spray, a heartbeat that would
    # re-register its agent): the arbiter's overboard gate refuses it like a durable one.
    shared_write: bool = False
    # Removes something for one consumer (a tuple, a salvage entry) and accepts `requestId`: a
    # repeat with the same id returns the recorded result (state/takerecords.py); the SDK gives
    # every such call a fresh id and repeats it after a lost reply.
    takes: bool = False
    # It makes the daemon run a command or reach out on the caller's behalf (spawn, fleets,
    # webhooks' targets): the HTTP gate refuses it to an unauthenticated caller whatever the
    # door, on top of the door's own check (docs/security.md).
    runs_commands: bool = False

    def __post_init__(self) -> None:
        if self.actor is not None and all(a.name != self.actor for a in self.args):
            raise ValueError(f"{self.name}: actor {self.actor!r} is not one of its arguments")
        if self.takes and all(a.name != "requestId" for a in self.args):
            raise ValueError(f"{self.name}: a take must accept requestId (schema.REQUEST_ID)")

    @property
    def method_name(self) -> str:
        """The SDK method name: `port.claim` -> `port_claim`."""
        return self.name.replace(".", "_").replace("-", "_")


def _num(arg: Arg, kind: type, config: Any = None) -> Callable[[Any], Any]:
    lo, hi, name = arg.min, arg.max, arg.name
    if arg.max_setting is not None and config is not None:
        hi = getattr(config, arg.max_setting)
    beyond = f" (setting {arg.max_setting})" if arg.max_setting else ""

    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
            if kind is int and isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise OpError("invalid_argument", f"{name} must be {'a number' if kind is float else 'an integer'}", name)
        if kind is float:
            try:
                v = float(v)
            except OverflowError:  # an integer beyond the float range
                v = math.inf
            if not math.isfinite(v):
                raise OpError("invalid_argument", f"{name} must be a finite number (not NaN or Infinity)", name)
        if lo is not None and v < lo:
            raise OpError("invalid_argument", f"{name} must be >= {lo:g}", name)
        if hi is not None and v > hi:
            raise OpError("invalid_argument", f"{name} must be <= {hi:g}{beyond}", name)
        if kind is int and not INT_MIN <= v <= INT_MAX:
            raise OpError("invalid_argument", f"{name} must be an integer between -2^63 and 2^63-1", name)
        return v

    return check


def _string(arg: Arg, control_re: re.Pattern, default_len: int) -> Callable[[Any], Any]:
    name, max_len, choices = arg.name, arg.max_len or default_len, arg.choices
    min_len = int(arg.min or 0)  # on a string argument, `min` is its shortest length

    def check(v: Any) -> Any:
        if not isinstance(v, str):
            raise OpError("invalid_argument", f"{name} must be a string", name)
        if len(v) < min_len:
            raise OpError("invalid_argument", f"{name} must be at least {min_len} character(s)", name)
        if len(v) > max_len:
            raise OpError("too_large" if max_len >= 4096 else "invalid_argument", f"{name} is longer than {max_len} characters", name)
        if control_re.search(v):
            raise OpError("invalid_argument", f"{name} must not contain NUL or control characters", name)
        if choices is not None and v not in choices:
            raise OpError("invalid_argument", f"{name} must be one of: {', '.join(choices)}", name)
        return v

    return check


def _checker(arg: Arg, config: Any = None) -> Callable[[Any], Any]:
    t, name = arg.type, arg.name
    if t == "int":
        return _num(arg, int, config)
    if t == "float":
        return _num(arg, float)
    if t == "str":
        return _string(arg, _CONTROL_RE, 1024)
    if t == "text":
        return _string(arg, _TEXT_CONTROL_RE, 1 << 20)
    if t == "name":
        return _name_checker(name)
    if t == "identity":
        return lambda v: check_identity(v, name)
    if t == "idpattern":
        return lambda v: check_identity_pattern(v, name)
    if t == "bool":
        def check_bool(v: Any) -> Any:
            if not isinstance(v, bool):
                raise OpError("invalid_argument", f"{name} must be true or false", name)
            return v
        return check_bool
    if t in ("dict", "list"):
        kind = dict if t == "dict" else list
        max_len = arg.max_len

        def check_container(v: Any) -> Any:
            if not isinstance(v, kind):
                raise OpError("invalid_argument", f"{name} must be {'an object' if t == 'dict' else 'an array'}", name)
            if max_len is not None and len(v) > max_len:
                raise OpError("invalid_argument", f"{name} has more than {max_len} entries", name)
            _check_nesting(v, name)
            return v
        return check_container

    def check_any(v: Any) -> Any:
        if v.__class__ is dict or v.__class__ is list:
            _check_nesting(v, name)
        elif v.__class__ is float and not math.isfinite(v):
            raise OpError("invalid_argument", f"{name} must not hold NaN or Infinity (not JSON)", name)
        return v
    return check_any


def _check_nesting(value: dict | list, name: str) -> None:
    """Refuse a container nested deeper than MAX_NESTING levels, or holding NaN/Infinity.

    Iterative (no recursion). A non-finite float can arrive over IPC (MessagePack carries it);
    stored, it would be written back to HTTP clients as a bare `NaN`, which is not JSON.
    """
    stack = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        for child in container.values() if container.__class__ is dict else container:
            cls = child.__class__
            if cls is dict or cls is list:
                if depth >= MAX_NESTING:
                    raise OpError("invalid_argument", f"{name} is nested deeper than {MAX_NESTING} levels", name)
                stack.append((child, depth + 1))
            elif cls is float and not math.isfinite(child):
                raise OpError("invalid_argument", f"{name} must not hold NaN or Infinity (not JSON)", name)


_VALID_NAMES: set[str] = set()  # names seen valid; hot ops (heartbeat) repeat the same few
_VALID_NAMES_MAX = 65536


def _name_checker(name: str) -> Callable[[Any], Any]:
    def check_name(v: Any) -> Any:
        if v.__class__ is str and v in _VALID_NAMES:
            return v
        if not isinstance(v, str) or not NAME_RE.fullmatch(v):
            raise OpError("invalid_name", f"{name} must be 1-200 characters of A-Z a-z 0-9 . _ : / @ * -", name)
        if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(v)
        return v
    return check_name


def compile_validator(op: Op, config: Any = None) -> Callable[[dict], dict]:
    """Build the function that turns raw arguments into the handler's keyword arguments.

    Unknown keys are ignored (clients of older versions send extras); `None` means absent.
    `config` gives the maxima declared by settings (`Arg.max_setting`); without it, their defaults.
    """
    specs = [(a.name, _checker(a, config), a.required, a.default) for a in op.args]

    def validate(raw: dict) -> dict:
        out = {}
        for name, check, required, default in specs:
            v = raw.get(name)
            if v is None:
                if required:
                    raise OpError("missing_field", f"{name} is required", name)
                out[name] = default
            else:
                out[name] = check(v)
        return out

    return validate


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a JSON number")
    return value


# The C JSON decoder counts each level of nesting against the interpreter's recursion limit, on
# top of the caller's own stack; with the default 1,000 a body of ~950 levels parsed or not
# depending on how deep the front door's call stack happened to be. Room for 3,000 levels makes
# bodies within MAX_NESTING reach the validator (which names the field) whatever the caller;
# far deeper ones still fail to parse and are refused as invalid JSON.
if sys.getrecursionlimit() < 3000:
    sys.setrecursionlimit(3000)


def loads_json(text: str | bytes) -> Any:
    """Strict JSON (RFC 8259): NaN, Infinity and numbers that overflow a float are refused.

    Python's json module accepts them by default, and a value taken in that way would be
    stored and later written back out as `NaN`, which no other JSON parser reads.
    """
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_text_args(op: Op, params: dict[str, str]) -> dict[str, Any]:
    """Turn query-string or path text into typed values by the op's schema (HTTP front door)."""
    types = {a.name: a.type for a in op.args}
    out: dict[str, Any] = {}
    for key, text in params.items():
        t = types.get(key)
        if t is None:
            continue
        if isinstance(text, list):
            text = text[-1]
        try:
            if t == "int":
                out[key] = int(text)
            elif t == "float":
                out[key] = float(text)
            elif t == "bool":
                low = text.lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError
                out[key] = low in _TRUE
            elif t in ("dict", "list", "any"):
                try:
                    out[key] = loads_json(text)
                except ValueError:
                    if t == "any":
                        out[key] = text
                    else:
                        raise
            else:
                out[key] = text
        except (ValueError, RecursionError):
            raise OpError("invalid_argument", f"{key} must be {t} (got {text[:40]!r})", key) from None
    return out
