"""SQLite underneath the in-memory state: WAL, numbered migrations, group commit.

The core is the only writer. `write()` opens a transaction lazily; the core calls `commit()`
once at the end of each loop tick, before the replies of that tick are sent, so one
transaction holds every durable change of the tick (group commit). Reads on the same
connection see the tick's uncommitted writes.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
KEY_CHECK = "master_key_check"  # meta key: pdcore.crypto.key_check of the key this database is sealed with


def migration_files() -> list[tuple[int, str, str]]:
    """Every numbered migration shipped in `pdcore/migrations`, in order."""
    found = []
    for entry in resources.files("pdcore.migrations").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    found.sort()
    numbers = [n for n, _, _ in found]
    if len(numbers) != len(set(numbers)):
        raise RuntimeError(f"duplicate migration numbers in {numbers}")
    return found


class Store:
    """The core's database handle."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the core's thread
        for suffix in ("", "-wal", "-shm"):  # the owner's alone (files of older versions were 0644)
            try:
                os.chmod(self.path + suffix, 0o600)
            except FileNotFoundError:
                pass
        self.in_tx = False
        self._op_active = False  # inside one durable op's call
        self._op_savepoint = False  # that op has written, under SAVEPOINT op
        self._op_mark = 0  # index in `pending` where the current op's staged writes start
        self.pending: list[tuple[str, tuple]] = []  # staged writes, run in order, in batches
        self.appends: list[tuple[str, tuple]] = []  # staged append-only inserts, grouped per table
        self._append_mark = 0
        self.commits = 0
        self.writes = 0

    def migrate(self) -> list[int]:
        """Apply every migration not yet applied; return the numbers applied now."""
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at INTEGER)"
        )
        done = {row[0] for row in self.db.execute("SELECT version FROM schema_migrations")}
        applied = []
        for number, name, sql in migration_files():
            if number in done:
                continue
            self.db.execute("BEGIN")
            try:
                for statement in _split_sql(sql):
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, CAST(strftime('%s','now') AS INTEGER) * 1000)",
                    (number, name),
                )
                self.db.execute("COMMIT")
            except Exception:
                self.db.execute("ROLLBACK")
                raise
            applied.append(number)
        return applied

    def meta(self, key: str) -> str | None:
        """A value of the `meta` table (facts about the database itself), or None."""
        row = self.read_one("SELECT value FROM meta WHERE key=?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (key, value))

    def _begin(self) -> None:
        if not self.in_tx:
            self.db.execute("BEGIN")
            self.in_tx = True

    def _savepoint(self) -> None:
        if self._op_active and not self._op_savepoint:
            self.db.execute("SAVEPOINT op")
            self._op_savepoint = True

    def _run_batch(self, batch: list[tuple[str, tuple]]) -> None:
        """Run staged writes in order, consecutive writes of one statement as one executemany."""
        i, n = 0, len(batch)
        while i < n:
            sql = batch[i][0]
            j = i + 1
            while j < n and batch[j][0] is sql:
                j += 1
            if j - i == 1:
                self.db.execute(sql, batch[i][1])
            else:
                self.db.executemany(sql, [params for _, params in batch[i:j]])
            i = j

    def _run_appends(self, appends: list[tuple[str, tuple]]) -> None:
        """Run append-only inserts grouped by statement: they commute with each other."""
        groups: dict[str, list[tuple]] = {}
        for sql, params in appends:
            groups.setdefault(sql, []).append(params)
        for sql, rows in groups.items():
            self.db.executemany(sql, rows)

    def flush_pending(self) -> None:
        """Run staged writes now (before a read or an immediate write, and at commit)."""
        if not self.pending and not self.appends:
            return
        self._begin()
        pending, self.pending = self.pending, []
        appends, self.appends = self.appends, []
        if self._op_active:
            self._run_batch(pending[:self._op_mark])
            self._run_appends(appends[:self._append_mark])
            mine, mine_appends = pending[self._op_mark:], appends[self._append_mark:]
            if mine or mine_appends:
                self._savepoint()
                self._run_batch(mine)
                self._run_appends(mine_appends)
        else:
            self._run_batch(pending)
            self._run_appends(appends)
        self._op_mark = self._append_mark = 0

    def write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Run a write now (in the tick's transaction) and return its cursor."""
        self.flush_pending()
        self._begin()
        self._savepoint()
        self.writes += 1
        return self.db.execute(sql, params)

    def stage(self, sql: str, params: tuple = ()) -> None:
        """Queue a write whose cursor nobody needs; staged writes run in batches (hot paths).

        Pass the same `sql` string object each time (a module constant) so batches group.
        """
        self.writes += 1
        self.pending.append((sql, params))

    def append(self, sql: str, params: tuple = ()) -> None:
        """Queue an insert into an append-only table that no other staged write touches.

        Such inserts are batched per statement at flush time, in any order relative to other
        staged writes (the activity log: one executemany per tick instead of one insert per op).
        """
        self.writes += 1
        self.appends.append((sql, params))

    def write_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        self.flush_pending()
        self._begin()
        self._savepoint()
        self.writes += 1
        self.db.executemany(sql, rows)

    # An op's writes sit under a savepoint taken lazily at its first write, so a failing op
    # leaves nothing behind and an op that writes nothing costs nothing.
    def begin_op(self) -> None:
        self._op_active = True
        self._op_savepoint = False
        self._op_mark = len(self.pending)
        self._append_mark = len(self.appends)

    def end_op(self) -> None:
        if self._op_savepoint:
            self.db.execute("RELEASE op")
        self._op_active = self._op_savepoint = False

    def abort_op(self) -> None:
        del self.pending[self._op_mark:]  # staged writes of the failed op
        del self.appends[self._append_mark:]
        if self._op_savepoint:  # writes it already ran
            self.db.execute("ROLLBACK TO op")
            self.db.execute("RELEASE op")
        self._op_active = self._op_savepoint = False

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row | tuple]:
        self.flush_pending()
        return self.db.execute(sql, params).fetchall()

    def read_one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        self.flush_pending()
        return self.db.execute(sql, params).fetchone()

    def commit(self) -> bool:
        """Commit the tick's transaction; return True when there was one."""
        self.flush_pending()
        if not self.in_tx:
            return False
        self.db.execute("COMMIT")
        self.in_tx = False
        self.commits += 1
        return True

    def checkpoint(self) -> None:
        """Copy the WAL into the database from a connection of its own (runs off the core's thread)."""
        db = sqlite3.connect(self.path, timeout=5)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def rollback(self) -> None:
        self.pending = []
        self.appends = []
        if self.in_tx:
            self.db.execute("ROLLBACK")
            self.in_tx = False

    def close(self) -> None:
        self.commit()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.db.close()


def where_clause(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """`(" WHERE a = ? AND b >= ?", [a, b])` from (condition, value) pairs; a None value is no filter.

    The read ops filter by optional fields; this is the one place that turns them into SQL.
    """
    parts, params = [], []
    for condition, value in conditions:
        if value is None:
            continue
        parts.append(condition)
        params.append(value)
    return (" WHERE " + " AND ".join(parts) if parts else ""), params


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements; `sqlite3.complete_statement` keeps triggers whole."""
    statements, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
