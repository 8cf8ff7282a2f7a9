"""Wait-for-service (SPEC.md §14, 3.7 routes `GET /wait/:id`, `POST /wait`).

A wait answers at once when the identity is claimed, and otherwise parks in the core on the
key `("service", identity)` until a claim of that identity wakes it or the timeout passes
(then it refuses with `timeout`, HTTP 408). No polling: the wake comes from the claim itself.
"Ready" here means claimed; a caller that needs the service to answer HTTP checks that on its
own side (`pd up` does).
"""

from __future__ import annotations

from typing import Any

from pdcore.errors import OpError
from pdcore.ops.schema import check_identity
from pdcore.state.base import Ctx, Park, Primitive


def service_key(identity: str) -> tuple:
    """The park/wake key of an identity: woken whenever that identity is claimed."""
    return ("service", identity)


class WaitTimeout(OpError):
    """The `timeout` refusal of a multi-service wait, naming what is missing when it is sent.

    The core keeps the refusal of the first park and sends it at the deadline; the services
    still missing then are worked out at that moment, not when the wait began.
    """

    def __init__(self, waits: Waits, wanted: list[str], wait_ms: int) -> None:
        super().__init__("timeout", "", "ids")
        self.waits, self.wanted, self.wait_ms = waits, wanted, wait_ms
        self.refresh()

    def refresh(self) -> None:
        missing = [i for i in self.wanted if self.waits._claimed(i) is None]
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        self.message = (f"{len(missing)} of {len(self.wanted)} service(s) were not claimed within {self.wait_ms} ms "
                        f"({shown}); start them (pd up, pd claim) or wait longer with timeout")
        self.args = (self.message,)
        self.extra = {"missing": missing, "ready": [i for i in self.wanted if i not in missing],
                      "timeoutMs": self.wait_ms}

    def to_dict(self) -> dict:
        self.refresh()
        return super().to_dict()


class Waits(Primitive):
    name = "waits"
    load_order = 60

    # -- waking ----------------------------------------------------------------------------
    def on_activity(self, ctx: Ctx, type: str, target: str | None, details: dict) -> None:
        """Every new claim records `service.claim`: wake the waits on that identity."""
        if type == "service.claim" and target is not None:
            self.root.wake(service_key(target))

    # -- helpers ---------------------------------------------------------------------------
    def _wait_ms(self, timeout: int | None) -> int:
        cfg = self.config
        wait = cfg.wait_default_ms if timeout is None else timeout
        if wait > cfg.wait_max_ms:
            raise OpError("invalid_argument", f"timeout must be <= {cfg.wait_max_ms} ms (wait_max_ms)", "timeout")
        return wait

    def _claimed(self, identity: str) -> dict | None:
        svc = self.root.ports.trie.get(identity)
        return None if svc is None else svc.to_dict()

    def _ids(self, ids: Any, services: Any) -> list[str]:
        field = "ids" if ids is not None else "services"
        raw = ids if ids is not None else services
        if raw is None:
            raise OpError("missing_field", "ids (a list of identities to wait for) is required", "ids")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise OpError("invalid_argument", f"{field} must be a non-empty list of identities", field)
        if len(raw) > self.config.wait_max_ids:
            raise OpError("invalid_argument", f"{field} names more than {self.config.wait_max_ids} identities "
                          "(wait_max_ids); wait in several calls", field)
        out: dict[str, None] = {}
        for identity in raw:
            out[check_identity(identity, field)] = None
        return list(out)

    # -- operations ------------------------------------------------------------------------
    def wait(self, ctx: Ctx, id: str, timeout: int | None = None) -> dict | Park:
        """The service `id` once it is claimed; park up to `timeout` ms until then."""
        wait = self._wait_ms(timeout)
        service = self._claimed(id)
        if service is not None:
            return {"id": id, "port": service["port"], "service": service, "ready": True,
                    "message": f"{id} is claimed on port {service['port']}"}
        refusal = OpError("timeout", f"{id} was not claimed within {wait} ms; start it (pd up, pd claim) or "
                          "wait longer with timeout", "id", id=id, timeoutMs=wait)
        if wait <= 0:
            raise refusal
        return Park(keys=(service_key(id),), deadline=ctx.now + wait, on_timeout=refusal)

    def wait_many(self, ctx: Ctx, ids: Any = None, services: Any = None, timeout: int | None = None) -> dict | Park:
        """Every service of `ids` once all are claimed; park up to `timeout` ms until then."""
        wanted = self._ids(ids, services)
        wait = self._wait_ms(timeout)
        found = {identity: self._claimed(identity) for identity in wanted}
        missing = [identity for identity, service in found.items() if service is None]
        if not missing:
            listed = [found[identity] for identity in wanted]
            return {"ids": wanted, "services": listed, "ports": {s["id"]: s["port"] for s in listed},
                    "ready": True, "count": len(listed), "message": f"all {len(listed)} service(s) are claimed"}
        refusal = WaitTimeout(self, wanted, wait)
        if wait <= 0:
            raise refusal
        # Parked on every wanted identity, not only the missing ones: a retry that still misses
        # some keeps this first park (keys and deadline), and one claimed now may be released
        # and claimed again before the others arrive.
        return Park(keys=tuple(service_key(i) for i in wanted), deadline=ctx.now + wait, on_timeout=refusal)


PRIMITIVE = Waits
