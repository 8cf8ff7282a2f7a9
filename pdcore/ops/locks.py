"""Operations on locks with fencing tokens (SPEC.md §6), with the 3.7 routes."""

from pdcore.ops.schema import Arg, Code37, Op, Route

_NAME = Arg("name", "name", required=True, where="path", doc="the lock's name")
_OWNER_DOC = "who holds it; defaults to X-Agent-Id over HTTP, then the caller's agentId, else `anonymous`"
# 3.7 answered every failed PUT 400 LOCK_NOT_FOUND, and a refused DELETE 403 LOCK_NOT_FOUND.
_EXTEND_37 = tuple(Code37(ours, "LOCK_NOT_FOUND", 400) for ours in ("not_found", "expired", "not_owner"))
_RELEASE_37 = (Code37("not_owner", "LOCK_NOT_FOUND", 403),)
_TTL_DOC = "ms until the lock expires; 0 or negative: the default; capped at lock_ttl_max_ms. " \
           "Over IPC, leaving it out binds the lock to the connection instead"

OPS = (
    Op("lock.acquire", "locks.acquire",
       "Take a lock; held (also by you) is 409 lock_held unless renew. Returns a fence that grows every "
       "time the lock changes hands.",
       args=(
           _NAME,
           Arg("owner", "str", max_len=200, doc=_OWNER_DOC),
           Arg("ttl", "int", doc=_TTL_DOC),
           Arg("wait", "int", min=0, doc="ms to wait in the daemon for the lock to free (no polling)"),
           Arg("metadata", "dict", max_len=64),
           Arg("renew", "bool", default=False,
               doc="when the owner already holds it, renew it in place (same fence) instead of refusing"),
       ),
       reply={"name": "str", "owner": "str", "fence": "int", "acquiredAt": "int", "expiresAt": "int",
              "connectionBound": "bool", "renewed": "bool", "message": "str"},
       durable=True, parks=True, actor="owner",
       errors=("lock_held", "lock_limit", "invalid_name", "invalid_argument"),
       routes=(Route("POST", "/locks/{name}", v37=True),), cli=("lock", "with-lock")),
    Op("lock.extend", "locks.extend", "Push a held lock's expiry to now + ttl (fails once it has expired).",
       args=(
           _NAME,
           Arg("owner", "str", max_len=200, doc=_OWNER_DOC),
           Arg("ttl", "int", doc="ms from now; 0 or negative: the default; capped at lock_ttl_max_ms"),
           Arg("fence", "int", min=0, doc="refuse unless the lock is still at this fence"),
       ),
       reply={"name": "str", "owner": "str", "fence": "int", "expiresAt": "int", "message": "str"},
       durable=True, actor="owner", errors=("not_found", "expired", "not_owner"),
       routes=(Route("PUT", "/locks/{name}", v37=True, codes37=_EXTEND_37),), cli=("lock", "with-lock")),
    Op("lock.release", "locks.release", "Release a lock; only its owner may, unless force.",
       args=(
           _NAME,
           Arg("owner", "str", max_len=200, doc=_OWNER_DOC),
           Arg("force", "bool", default=False, doc="release even if someone else holds it"),
           Arg("fence", "int", min=0, doc="refuse unless the lock is still at this fence"),
       ),
       reply={"released": "bool", "name": "str", "fence": "int", "message": "str"},
       durable=True, actor="owner", errors=("not_owner",),
       routes=(Route("DELETE", "/locks/{name}", v37=True, codes37=_RELEASE_37),), cli=("unlock", "with-lock")),
    Op("lock.get", "locks.get", "Is a lock held, by whom, until when, at which fence?",
       args=(_NAME,),
       reply={"held": "bool", "name": "str", "owner": "str", "fence": "int", "acquiredAt": "int",
              "expiresAt": "int", "connectionBound": "bool", "metadata": "dict"},
       routes=(Route("GET", "/locks/{name}", v37=True),), cli=("locks",)),
    Op("lock.list", "locks.list", "Every held lock, newest first, optionally of one owner.",
       args=(Arg("owner", "str", max_len=200, where="query"),),
       reply={"locks": "list", "count": "int"},
       routes=(Route("GET", "/locks", v37=True),), cli=("locks",)),
)
