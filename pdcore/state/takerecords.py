"""Results of takes kept under the caller's request id, so a repeated take is answered, not re-run.

A take (`tuple.in`, `salvage.claim`) removes something for one consumer. When its reply is
lost (the connection dropped, the core was killed after the commit), a plain retry would take
another tuple and the first would reach nobody. A take that carries a `requestId` records its
result under that id in the same transaction as the take; a take repeated with the id gets the
recorded result back. Reusing an id for another action or other arguments is refused.

Only takes that took something are recorded: an empty take changed nothing, so running it again
is harmless. Records live `take_record_ttl_ms` and at most `take_records_max` are kept (the
oldest go first). Every record lives as long, so insertion order is expiry order: one timer on
the core's heap, for the oldest record, drops what is due and re-arms for the next.
The result itself stays in the database (read back on a repeat only); memory holds the keys.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.timers import Timer

_INSERT = "INSERT OR REPLACE INTO take_records (request_id, action, fingerprint, result, expires_at) VALUES (?,?,?,?,?)"
_DELETE = "DELETE FROM take_records WHERE request_id = ?"


def fingerprint(args: dict) -> str:
    """A canonical text of a take's arguments: a repeat must ask for the same thing."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)


def reused(request_id: str, action: str) -> OpError:
    """The refusal of a requestId used again for another action or other arguments."""
    return OpError("conflict", f"requestId {request_id!r} was used for another take ({action} with other "
                               "arguments); use a new id for each take", "requestId")


class TakeRecords(Primitive):
    name = "take_records"
    load_order = 40

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.keys: OrderedDict[str, tuple[str, str, int]] = OrderedDict()  # id -> (action, fingerprint, expires_at)
        self._timer: Timer | None = None

    def load(self, now: int) -> None:
        self.store.write("DELETE FROM take_records WHERE expires_at <= ?", (now,))
        for request_id, action, fp, expires_at in self.store.read(
                "SELECT request_id, action, fingerprint, expires_at FROM take_records ORDER BY expires_at"):
            self.keys[request_id] = (action, fp, expires_at)
        self._trim()
        self._arm()

    def counts(self) -> dict[str, int]:
        return {"take_records": len(self.keys)}

    def recall(self, request_id: str | None, action: str, args: dict) -> dict | None:
        """The recorded result of this take, or None when it has not been made yet.

        Raises `conflict` when the id was used for another action or other arguments.
        """
        if request_id is None:
            return None
        key = self.keys.get(request_id)
        if key is None:
            return None
        if key[0] != action or key[1] != fingerprint(args):
            raise reused(request_id, key[0])
        row = self.store.read_one("SELECT result FROM take_records WHERE request_id = ?", (request_id,))
        if row is None:  # not possible while keys mirror the table; answer as a first take would
            del self.keys[request_id]
            return None
        return {**json.loads(row[0]), "repeated": True}

    def remember(self, ctx: Ctx, request_id: str | None, action: str, args: dict, result: dict) -> None:
        """Record a take's result under its id, in the take's own transaction."""
        if request_id is None:
            return
        expires_at = ctx.now + self.config.take_record_ttl_ms
        self.keys[request_id] = (action, fingerprint(args), expires_at)
        self.keys.move_to_end(request_id)
        self.store.stage(_INSERT, (request_id, action, fingerprint(args),
                                   json.dumps(result, separators=(",", ":")), expires_at))
        self._trim()
        if self._timer is None:
            self._arm()

    def _trim(self) -> None:
        while len(self.keys) > self.config.take_records_max:
            request_id, _ = self.keys.popitem(last=False)
            self.store.stage(_DELETE, (request_id,))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.keys:
            oldest = next(iter(self.keys.values()))
            self._timer = self.root.timers.add(oldest[2], self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.root.clock()
        while self.keys:
            request_id, (_, _, expires_at) = next(iter(self.keys.items()))
            if expires_at > now:
                break
            del self.keys[request_id]
            self.store.stage(_DELETE, (request_id,))
        self._arm()


PRIMITIVE = TakeRecords
