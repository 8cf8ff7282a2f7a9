"""The arbiter (SPEC.md §12): six invariants checked on the transitions they concern.

1. PID_SQUATTING        a claim names a pid that belongs to another registered agent
2. CAP_ESCALATION       an action in a harbor beyond the agent's declared capabilities
3. NOTE_MONOTONICITY    notes are only ever appended; each session's hash chain verifies
4. NOTE_INTEGRITY       every stored note decrypts and authenticates under the master key
5. LOCK_OWNER_VALID     only a lock's owner releases it; no lock held by a dead owner past a reaper pass
6. HEARTBEAT_FRESHNESS  no agent reads as alive past its dead threshold

Other primitives call the `check_*` methods on their transitions; a periodic sweep checks what
no single transition shows (heartbeats, locks of dead owners, note counts) and asks every
primitive that defines `arbiter_audit(ctx, arbiter)` to report (the notes code verifies chains
and decryption there). Each violation is recorded durably with who, what and when.

Recording is deferred to a zero-delay core timer: a check often runs inside an operation that
is then refused, and that operation's savepoint is rolled back, which must not erase the record.

Strict mode (`arbiter_strict`): a critical violation with a known offender throws it overboard.
At once its further writes are refused (`check_writes`, called by the core before every op while
anyone is overboard; the writer is the caller or the agent the op's `actor` argument names);
then, outside the failed operation, the agent is marked dead ("man overboard"), so the reaper's
path moves its active session to salvage and frees its locks. It is back on board when it
registers again (the agent reads as registered and not dead).
"""

from __future__ import annotations

import json
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.state.harbors import covers
from pdcore.store import where_clause
from pdcore.timers import Timer

CHANNEL = "pd:arbiter"

# name -> (invariant number, severity, description)
RULES: dict[str, tuple[int, str, str]] = {
    "PID_SQUATTING": (1, "critical", "A claim names a pid that belongs to another registered agent."),
    "CAP_ESCALATION": (2, "critical", "An agent acts in a harbor beyond the capabilities it declared."),
    "NOTE_MONOTONICITY": (3, "critical", "Notes are only ever appended; each session's hash chain verifies."),
    "NOTE_INTEGRITY": (4, "critical", "Every stored note decrypts and authenticates under the master key."),
    "LOCK_OWNER_VALID": (5, "violation", "Only a lock's owner releases it; no lock is held by a dead owner "
                                         "past the reaper's next pass."),
    "HEARTBEAT_FRESHNESS": (6, "warning", "No agent reads as alive past its dead threshold."),
}

# Operations an overboard agent may still run: the ways back on board.
WRITE_EXEMPT = frozenset({"agent.register", "sugar.begin"})


class Overboard:
    __slots__ = ("agent_id", "violation_id", "rule", "since", "applied")

    def __init__(self, agent_id: str, violation_id: int, rule: str, since: int, applied: bool) -> None:
        self.agent_id = agent_id
        self.violation_id = violation_id
        self.rule = rule
        self.since = since
        self.applied = applied  # the man-overboard step (mark dead, salvage) has run


class Arbiter(Primitive):
    name = "arbiter"
    load_order = 90

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.strict = bool(self.config.arbiter_strict)
        self.next_id = 1
        self.total = 0
        self.by_rule: dict[str, int] = dict.fromkeys(RULES, 0)
        self.open_subjects: set[tuple[str, str]] = set()  # (rule, subject) already recorded
        self.overboard: dict[str, Overboard] = {}
        self.pending: list[dict] = []
        self._flush_timer: Timer | None = None
        self._sweep_timer: Timer | None = None
        self.last_sweep: int | None = None
        self.note_high_water: tuple[int, int] | None = None  # (count, max id) of the notes table

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        row = self.store.read_one("SELECT seq FROM sqlite_sequence WHERE name = 'arbiter_violations'")
        self.next_id = (row[0] if row else 0) + 1
        for rule, count in self.store.read("SELECT rule, COUNT(*) FROM arbiter_violations GROUP BY rule"):
            self.by_rule[rule] = count
            self.total += count
        for rule, subject in self.store.read(
            "SELECT rule, subject FROM arbiter_violations WHERE subject IS NOT NULL"
        ):
            self.open_subjects.add((rule, subject))
        for agent_id, violation_id, rule, since in self.store.read(
            "SELECT agent_id, violation_id, rule, since FROM arbiter_overboard"
        ):
            self.overboard[agent_id] = Overboard(agent_id, violation_id, rule, since, True)
        self._arm_sweep(now)

    def counts(self) -> dict[str, int]:
        return {"arbiter_violations": self.total, "arbiter_overboard": len(self.overboard)}

    # -- recording -------------------------------------------------------------------------
    def record(self, ctx: Ctx, rule: str, details: str, agent_id: str | None = None, target: str | None = None,
               subject: str | None = None, action: str = "logged", **metadata: Any) -> dict | None:
        """Record a violation of `rule`; None when `subject` was recorded already (sweeps repeat).

        In strict mode a critical violation with a known offender throws the offender overboard.
        """
        if subject is not None:
            if (rule, subject) in self.open_subjects:
                return None
            self.open_subjects.add((rule, subject))
        invariant, severity, _ = RULES[rule]
        if self.strict and severity == "critical" and agent_id:
            action = "man_overboard"
        violation = {
            "id": self.next_id,
            "timestamp": ctx.now,
            "rule": rule,
            "invariant": invariant,
            "severity": severity,
            "agentId": agent_id,
            "target": target,
            "details": details,
            "action": action,
            "strict": self.strict,
            "metadata": metadata or None,
        }
        self.next_id += 1
        self.total += 1
        self.by_rule[rule] = self.by_rule.get(rule, 0) + 1
        if action == "man_overboard" and agent_id not in self.overboard:
            self.overboard[agent_id] = Overboard(agent_id, violation["id"], rule, ctx.now, False)
        self.pending.append({**violation, "_subject": subject})
        if self._flush_timer is None:
            self._flush_timer = self.root.timers.add(ctx.now, self._flush)
        return violation

    def _flush(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self) -> int:
        """Write pending violations, and throw their offenders overboard (outside any op)."""
        if not self.pending:
            return 0
        pending, self.pending = self.pending, []
        self.store.write_many(
            "INSERT INTO arbiter_violations (id, ts, rule, severity, agent_id, target, details, action, subject, "
            "metadata) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(v["id"], v["timestamp"], v["rule"], v["severity"], v["agentId"], v["target"], v["details"], v["action"],
              v["_subject"], json.dumps(v["metadata"], default=str) if v["metadata"] else None) for v in pending],
        )
        for v in pending:
            ctx = Ctx(max(v["timestamp"], self.root.clock()), source="internal")
            public = {k: val for k, val in v.items() if k != "_subject"}
            self.root.activity.record(ctx, "arbiter.violation", v["target"], actor=v["agentId"], rule=v["rule"],
                                      severity=v["severity"], action=v["action"], violationId=v["id"])
            self.root.publish(CHANNEL, {"event": "arbiter.violation", "violation": public}, None, ctx.now)
            entry = self.overboard.get(v["agentId"]) if v["agentId"] else None
            if entry is not None and not entry.applied and entry.violation_id == v["id"]:
                self._man_overboard(ctx, entry, v)
        self._prune()
        return len(pending)

    def _prune(self) -> None:
        keep = self.config.arbiter_violations_max
        if self.next_id - 1 > keep:
            self.store.write("DELETE FROM arbiter_violations WHERE id <= ?", (self.next_id - 1 - keep,))

    def _man_overboard(self, ctx: Ctx, entry: Overboard, violation: dict) -> None:
        """Mark the offender dead: its session goes to salvage, its locks are freed (the reaper's path)."""
        entry.applied = True
        self.store.write(
            "INSERT INTO arbiter_overboard (agent_id, violation_id, rule, since) VALUES (?,?,?,?) "
            "ON CONFLICT(agent_id) DO UPDATE SET violation_id=excluded.violation_id, rule=excluded.rule, "
            "since=excluded.since", (entry.agent_id, entry.violation_id, entry.rule, entry.since))
        agents = getattr(self.root, "agents", None)
        agent = agents.get_agent(entry.agent_id) if agents is not None else None
        if agent is not None and agent.dead_at is None:
            agents.mark_dead(ctx, agent, f"man overboard: {entry.rule}")
        self.root.activity.record(ctx, "arbiter.man_overboard", entry.agent_id, actor=entry.agent_id,
                                  rule=entry.rule, violationId=entry.violation_id)
        self.root.publish(CHANNEL, {"event": "arbiter.man_overboard", "agentId": entry.agent_id,
                                    "rule": entry.rule, "violationId": entry.violation_id}, None, ctx.now)

    def _refuse_overboard(self, agent_id: str, rule: str, field: str = "agentId") -> OpError:
        return OpError("agent_overboard",
                       f"the arbiter (strict mode) threw agent {agent_id} overboard for {rule}: its session goes to "
                       "salvage and its writes are refused until it registers again (POST /agents or pd begin)",
                       field, agentId=agent_id, rule=rule)

    # -- the write gate (the core calls this before every operation) -----------------------
    def check_writes(self, ctx: Ctx, op: Any = None, args: dict | None = None) -> None:
        """Refuse a write by an agent thrown overboard, until it registers again.

        `op` is the catalogue entry (its `name` and `durable` decide), `args` the call's raw
        arguments. The acting agents are the caller (`ctx.agent_id`) and the agent the op's
        `actor` argument names (a lock's `owner`, a tuple's `writtenBy`, a message's `sender`, a
        heartbeat's `id`): the handler attributes the write to that one, so naming yourself
        there instead of in agentId does not get an overboard agent past the gate.
        """
        if not self.overboard:
            return
        name = getattr(op, "name", op)
        if name in WRITE_EXEMPT:
            return
        if op is not None and not getattr(op, "durable", True) and not getattr(op, "shared_write", False):
            return  # a read (the non-durable writes are marked Op.shared_write)
        self._check_actor(ctx, ctx.agent_id)
        field = getattr(op, "actor", None)
        if field is not None and args:
            named = args.get(field)
            if named.__class__ is str and named != ctx.agent_id:
                self._check_actor(ctx, named, field)

    def _check_actor(self, ctx: Ctx, actor: str | None, field: str = "agentId") -> None:
        entry = self.overboard.get(actor) if actor.__class__ is str else None
        if entry is None:
            return
        if entry.applied and self._registered_again(actor):
            self._back_on_board(ctx, entry)
            return
        raise self._refuse_overboard(actor, entry.rule, field)

    def _registered_again(self, agent_id: str) -> bool:
        agents = getattr(self.root, "agents", None)
        agent = agents.get_agent(agent_id) if agents is not None else None
        return agent is not None and agent.dead_at is None

    def _back_on_board(self, ctx: Ctx, entry: Overboard) -> None:
        del self.overboard[entry.agent_id]
        self.store.write("DELETE FROM arbiter_overboard WHERE agent_id = ?", (entry.agent_id,))
        self.root.activity.record(ctx, "arbiter.back_on_board", entry.agent_id, actor=entry.agent_id,
                                  rule=entry.rule)

    def is_overboard(self, agent_id: str) -> bool:
        entry = self.overboard.get(agent_id)
        return entry is not None and not (entry.applied and self._registered_again(agent_id))

    # -- 1. pid squatting ------------------------------------------------------------------
    def check_claim_pid(self, ctx: Ctx, pid: int | None, agent_id: str | None = None,
                        identity: str | None = None) -> None:
        """A named agent claiming with a pid registered to another live agent squats it.

        Recorded always; in strict mode the claim is refused and the claimer thrown overboard.
        """
        actor = agent_id or ctx.agent_id
        agents = getattr(self.root, "agents", None)
        if not pid or not actor or agents is None:
            return
        for other in agents.by_id.values():
            if other.pid == pid and other.id != actor and other.dead_at is None:
                v = self.record(ctx, "PID_SQUATTING", f"agent {actor} claimed {identity or 'a service'} with pid {pid}, "
                                f"which belongs to agent {other.id}", actor, identity, pid=pid, owner=other.id)
                if v is not None and v["action"] == "man_overboard":
                    raise self._refuse_overboard(actor, "PID_SQUATTING")
                return

    # -- 2. capability escalation ----------------------------------------------------------
    def check_capability(self, ctx: Ctx, harbor: str, agent_id: str | None, capability: str) -> None:
        """In a gated harbor a named agent must be a member holding `capability`; else refuse and record."""
        harbors = getattr(self.root, "harbors", None)
        if not agent_id or harbors is None:
            return
        h = harbors.get_harbor(harbor, ctx.now)
        if h is None or not h.gated:
            return
        member = h.members.get(agent_id)
        if member is not None and covers(member.capabilities, capability):
            return
        held = member.capabilities if member is not None else []
        self.capability_escalation(ctx, harbor, agent_id, [capability], held, capability)
        why = "is not a member of it" if member is None else f"declared only {', '.join(held) or 'nothing'}"
        raise OpError("capability_denied", f"agent {agent_id} may not {capability} in harbor {harbor}: it {why} "
                      f"(enter the harbor with that capability)", "harbor", capability=capability, harbor=harbor)

    def capability_escalation(self, ctx: Ctx, harbor: str, agent_id: str, wanted: list[str], held: list[str],
                              action: str) -> dict | None:
        """Record an attempt to use (or declare) capabilities beyond those granted."""
        return self.record(ctx, "CAP_ESCALATION", f"agent {agent_id} attempted {action} in harbor {harbor} with "
                           f"{', '.join(wanted)} beyond its grant ({', '.join(held) or 'none'})", agent_id, harbor,
                           action="refused", wanted=wanted, held=held)

    # -- 3 and 4. notes --------------------------------------------------------------------
    def check_note_count(self, ctx: Ctx, session_id: str, count: int, previous: int,
                         agent_id: str | None = None) -> None:
        """A session's note count must never go down."""
        if count < previous:
            self.record(ctx, "NOTE_MONOTONICITY", f"session {session_id} had {previous} notes and now has {count}",
                        None, session_id, subject=f"count:{session_id}:{count}", sessionAgent=agent_id,
                        previous=previous, count=count)

    def check_note_chain(self, ctx: Ctx, session_id: str, ok: bool, note_id: int | None = None,
                         agent_id: str | None = None, detail: str = "") -> None:
        """Report a session's hash chain verification (the notes code calls this from verify/audit)."""
        if not ok:
            self.record(ctx, "NOTE_MONOTONICITY", f"the note hash chain of session {session_id} breaks at note "
                        f"{note_id}{': ' + detail if detail else ''}", None, session_id,
                        subject=f"chain:{session_id}:{note_id}", noteId=note_id, sessionAgent=agent_id)

    def check_note_integrity(self, ctx: Ctx, note_id: int, session_id: str | None, ok: bool,
                             agent_id: str | None = None, detail: str = "") -> None:
        """Report whether a stored note decrypted and authenticated under the master key."""
        if not ok:
            self.record(ctx, "NOTE_INTEGRITY", f"note {note_id} of session {session_id} does not decrypt and "
                        f"authenticate{': ' + detail if detail else ''}", None, session_id,
                        subject=f"note:{note_id}", noteId=note_id, sessionAgent=agent_id)

    def _check_notes_table(self, ctx: Ctx) -> None:
        """The notes table only grows: its row count and highest id never go down."""
        try:
            row = self.store.read_one("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM notes")
        except Exception:  # noqa: BLE001 - no notes table (yet): nothing to check
            return
        if row is None:
            return
        count, top = row
        if self.note_high_water is not None:
            prev_count, prev_top = self.note_high_water
            if count < prev_count or top < prev_top:
                self.record(ctx, "NOTE_MONOTONICITY", f"the notes table went from {prev_count} notes (highest id "
                            f"{prev_top}) to {count} (highest id {top}): notes were removed", None, "notes",
                            subject=f"table:{count}:{top}", previous=prev_count, count=count)
        self.note_high_water = (max(count, self.note_high_water[0]) if self.note_high_water else count,
                                max(top, self.note_high_water[1]) if self.note_high_water else top)

    # -- 5. lock owner validity ------------------------------------------------------------
    def check_lock_release(self, ctx: Ctx, name: str, owner: str | None, holder: str,
                           force: bool = False) -> None:
        """Record a release of `name` attempted by someone other than its holder (without force)."""
        if force or owner == holder:
            return
        actor = ctx.agent_id or owner
        self.record(ctx, "LOCK_OWNER_VALID", f"{owner or 'an unnamed caller'} tried to release lock {name}, "
                    f"held by {holder}", actor, name, action="refused", holder=holder, owner=owner)

    def _check_locks(self, ctx: Ctx) -> None:
        locks = getattr(self.root, "locks", None)
        agents = getattr(self.root, "agents", None)
        if locks is None or agents is None:
            return
        grace = 2 * self.config.reaper_interval_ms
        for lock in list(locks.locks.values()):
            if lock.expires_at is not None and lock.expires_at <= ctx.now:
                continue
            for who in {lock.owner, lock.agent_id} - {None}:
                agent = agents.get_agent(who)
                if agent is not None and agent.dead_at is not None and ctx.now - agent.dead_at > grace:
                    self.record(ctx, "LOCK_OWNER_VALID", f"lock {lock.name} is still held by {who}, dead since "
                                f"{agent.dead_at}", who, lock.name, subject=f"lock:{lock.name}:{lock.fence}",
                                fence=lock.fence, diedAt=agent.dead_at)
                    break

    # -- 6. heartbeat freshness ------------------------------------------------------------
    def _check_heartbeats(self, ctx: Ctx) -> None:
        agents = getattr(self.root, "agents", None)
        if agents is None:
            return
        cfg = self.config
        slack = 2 * cfg.reaper_interval_ms
        grace_until = self.root.started_at + getattr(cfg, "agent_restart_grace_ms", 0)
        for agent in list(agents.by_id.values()):
            if agent.dead_at is not None:
                continue
            due = max(agent.last_heartbeat + cfg.agent_dead_ms, grace_until)
            reads = agents.liveness_of(agent, ctx.now)
            if reads == "alive" and ctx.now - agent.last_heartbeat >= cfg.agent_dead_ms:
                detail = f"agent {agent.id} reads as alive {ctx.now - agent.last_heartbeat} ms after its last heartbeat"
            elif ctx.now > due + slack:
                detail = (f"agent {agent.id} is past its dead threshold ({ctx.now - agent.last_heartbeat} ms since its "
                          f"last heartbeat) and the reaper has not declared it dead")
            else:
                continue
            self.record(ctx, "HEARTBEAT_FRESHNESS", detail, agent.id, agent.id,
                        subject=f"hb:{agent.id}:{agent.last_heartbeat}", lastHeartbeat=agent.last_heartbeat,
                        reads=reads)

    # -- the sweep -------------------------------------------------------------------------
    def _arm_sweep(self, now: int) -> None:
        if self._sweep_timer is None:
            self._sweep_timer = self.root.timers.add(now + self.config.arbiter_sweep_interval_ms, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweep_timer = None
        now = self.root.clock()
        self.sweep(Ctx(now, source="internal"))
        self._arm_sweep(now)

    def sweep(self, ctx: Ctx) -> int:
        """Check what no single transition shows; return how many violations were found."""
        before = self.total
        self._check_heartbeats(ctx)
        self._check_locks(ctx)
        self._check_notes_table(ctx)
        self.root.notify("arbiter_audit", ctx, self)
        for agent_id, entry in list(self.overboard.items()):
            if entry.applied and self._registered_again(agent_id):
                self._back_on_board(ctx, entry)
        self.last_sweep = ctx.now
        self.flush()
        return self.total - before

    # -- operations ------------------------------------------------------------------------
    def status(self, ctx: Ctx) -> dict:
        rules = [{"name": name, "invariant": inv, "severity": sev, "description": desc,
                  "coverage": "enforced", "violations": self.by_rule.get(name, 0),
                  "strictModeAction": "man_overboard" if self.strict and sev == "critical" else "log_only"}
                 for name, (inv, sev, desc) in RULES.items()]
        overboard = [{"agentId": e.agent_id, "rule": e.rule, "violationId": e.violation_id, "since": e.since}
                     for e in self.overboard.values() if self.is_overboard(e.agent_id)]
        return {
            "active": True,
            "strictMode": self.strict,
            "mode": "strict_enforcement" if self.strict else "observe_only",
            "rulesCount": len(RULES),
            "rules": rules,
            "violationsCount": self.total,
            "byRule": dict(self.by_rule),
            "overboard": overboard,
            "lastSweepAt": self.last_sweep,
            "sweepIntervalMs": self.config.arbiter_sweep_interval_ms,
            "startedAt": self.root.started_at,
        }

    def violations(self, ctx: Ctx, limit: int = 50, offset: int = 0, rule: str | None = None,
                   agentId: str | None = None, since: int | None = None) -> dict:
        """Recorded violations, newest first."""
        self.flush()
        if rule is not None and rule.upper() not in RULES:
            raise OpError("invalid_argument", f"rule must be one of {', '.join(RULES)}", "rule")
        clause, params = where_clause(("rule = ?", rule.upper() if rule else None), ("agent_id = ?", agentId or None),
                                      ("ts >= ?", since))
        total = self.store.read_one(f"SELECT COUNT(*) FROM arbiter_violations{clause}", params)[0]
        rows = self.store.read(
            "SELECT id, ts, rule, severity, agent_id, target, details, action, metadata FROM arbiter_violations"
            f"{clause} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset])
        out = [{"id": r[0], "timestamp": r[1], "rule": r[2], "invariant": RULES.get(r[2], (0,))[0],
                "severity": r[3], "agentId": r[4], "target": r[5], "details": r[6], "action": r[7],
                "metadata": json.loads(r[8]) if r[8] else None} for r in rows]
        return {"violations": out, "count": len(out), "total": total}


PRIMITIVE = Arbiter
