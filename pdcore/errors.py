"""Errors are values with stable codes; one table maps each code to its HTTP status."""

from __future__ import annotations

# code -> HTTP status. Every code an operation may return is listed here, once.
STATUS_BY_CODE: dict[str, int] = {
    "invalid_argument": 400,
    "invalid_json": 400,
    "invalid_identity": 400,
    "invalid_name": 400,
    "invalid_pattern": 400,
    "missing_field": 400,
    "unknown_action": 400,
    "not_understood": 400,
    "fire_and_forget_not_allowed": 400,
    "unauthorized": 401,  # no token, or a wrong one, on the TCP port (docs/security.md)
    "forbidden": 403,
    "bad_host": 403,
    "bad_origin": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "lock_held": 409,
    "claim_taken": 409,
    "port_unavailable": 409,
    "not_owner": 409,
    "already_claimed": 409,
    "file_conflict": 409,
    "expired": 409,
    "capability_denied": 403,
    "agent_overboard": 403,
    "timeout": 408,
    "too_large": 413,
    "rate_limited": 429,
    "too_many_connections": 429,
    "too_many_parked": 429,  # a call that would wait past park_max_per_connection / park_max
    "too_many_patterns": 429,  # a SUBSCRIBE past a subscribe_*patterns* cap (nothing of it applied)
    "internal": 500,
    "unavailable": 503,
    "team_unavailable": 503,  # team mode: NATS/JetStream did not acknowledge in team_op_timeout_ms (docs/team.md)
    "team_full": 429,  # team mode: a team stream is at its byte cap (team_notes_max_bytes, team_inbox_max_bytes)
    # issue 3: agents, sessions, notes, salvage
    "session_active": 409,  # the agent already has an active session (use force, or end it)
    "session_ended": 409,  # the session is completed or abandoned: no more notes, claims or phases
    "invalid_state": 409,  # a salvage entry is not in a state that allows this step
    # issue 4: locks, webhooks
    "lock_limit": 429,  # the agent holds its maxLocks already
    "webhook_target_refused": 400,  # the URL is (or resolves to) loopback/private/link-local/metadata
    "webhook_limit": 409,  # webhook_max webhooks are registered already
    # issue 5: tuples, harbors, arbiter (capability_denied, agent_overboard, expired above)
    "harbor_full": 409,  # harbor_max_members agents are in the harbor already
    # fleet and spawn (docs/fleet.md)
    "fleet_running": 409,  # another runner (daemon or foreground) already runs this fleet
    "spawn_limit": 429,  # spawn_max_active runs are active already
}


# The `code` a Port Daddy 3.7 client reads, for our codes 3.7 had a word for. Over HTTP, a
# failure on a 3.7 route (`Route.v37`) carries it in `code` and ours in `reason`; a route may
# name its own words beside these (`Route.codes37`, e.g. `not_found` -> `SESSION_NOT_FOUND`).
CODES_37: dict[str, str] = {
    "lock_held": "LOCK_HELD",
    "invalid_identity": "IDENTITY_INVALID",
    "missing_field": "VALIDATION_ERROR",
    "invalid_argument": "VALIDATION_ERROR",
    "invalid_name": "VALIDATION_ERROR",
    "invalid_json": "VALIDATION_ERROR",
    "invalid_pattern": "VALIDATION_ERROR",
    "port_unavailable": "PORT_EXHAUSTED",
    "session_active": "SESSION_ACTIVE",
}


class OpError(Exception):
    """A refusal with a stable machine code, a sentence for humans, and the field at fault."""

    def __init__(self, code: str, message: str, field: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra

    @property
    def status(self) -> int:
        return STATUS_BY_CODE.get(self.code, 400)

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "error": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body

    @classmethod
    def from_dict(cls, body: dict) -> OpError:
        """From a reply body: over HTTP our word is in `reason` (`code` may be 3.7's), over IPC in `code`."""
        extra = {k: v for k, v in body.items() if k not in ("code", "reason", "error", "field", "success")}
        code = body.get("reason") or body.get("code") or "internal"
        return cls(code, body.get("error", "unknown error"), body.get("field"), **extra)
