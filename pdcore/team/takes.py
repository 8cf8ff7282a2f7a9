"""The take records a team shares: a take's answer under its requestId, read off the take's own write.

In team mode a take's record travels in the very write that makes the take: the tombstone that
takes a tuple (pdcore/team/tuples.py), the compare-and-set that claims a salvage entry
(pdcore/team/salvage.py). Every host follows that stream or bucket, so every host reads the
record and indexes it here, and a take repeated with its requestId (after a lost reply, a kill -9,
or on another host) is answered from it instead of taking again. Reusing an id for another
action or other arguments is refused, as in local mode (pdcore/state/takerecords.py).

One index per host, shared by the takes: requestId -> (action, fingerprint of the arguments,
answer, until). A record answers until `until` (`take_record_ttl_ms` after the take); at most
`take_records_max` are kept, the oldest seen go first.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from pdcore.state.takerecords import fingerprint, reused

# A requestId "<host id>:<rest>" says the take was first sent to host <host id> (docs/team.md)
_HOST_MARKED = re.compile(r"([A-Za-z0-9_-]{1,64}):.")


def first_host(request_id: str) -> str | None:
    """The host a marked requestId (`<host id>:<rest>`) names, else None."""
    found = _HOST_MARKED.match(request_id)
    return found.group(1) if found else None


class TakeIndex:
    """requestId -> (action, fingerprint, answer, until), from the takes' writes this host has seen."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.records: OrderedDict[str, tuple[str, str, Any, int]] = OrderedDict()

    def put(self, request_id: str, action: str, fp: str, answer: Any, until: int) -> tuple[str, str, Any, int]:
        """Index a record seen in a take's write; the first one kept under an id stays (the first answer)."""
        record = self.records.get(request_id)
        if record is None:
            record = self.records[request_id] = (action, fp, answer, until)
            while len(self.records) > self.config.take_records_max:
                self.records.popitem(last=False)
        return record

    def recall(self, request_id: str | None, action: str, asked: dict, now: int) -> Any | None:
        """The answer recorded for this take, or None when this host knows of none (or it is past its time).

        Raises `conflict` when the id was used for another action or other arguments."""
        if request_id is None:
            return None
        record = self.records.get(request_id)
        if record is None or record[3] <= now:
            return None
        if record[0] != action or record[1] != fingerprint(asked):
            raise reused(request_id, record[0])
        return record[2]
