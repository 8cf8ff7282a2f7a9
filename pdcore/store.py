"""SQLite underneath the in-memory state: WAL, numbered migrations, group commit.

The core is the only writer. `write()` opens a transaction lazily; the core calls `commit()`
once at the end of each loop tick, before the replies of that tick are sent, so one
transaction holds every durable change of the tick (group commit). Reads on the same
connection see the tick's uncommitted writes.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


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
        self.in_tx = False
        self._op_active = False  # inside one durable op's call
        self._op_savepoint = False  # that op has written, under SAVEPOINT op
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

    def _before_write(self) -> None:
        if not self.in_tx:
            self.db.execute("BEGIN")
            self.in_tx = True
        if self._op_active and not self._op_savepoint:
            self.db.execute("SAVEPOINT op")
            self._op_savepoint = True
        self.writes += 1

    def write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        self._before_write()
        return self.db.execute(sql, params)

    def write_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        self._before_write()
        self.db.executemany(sql, rows)

    # An op's writes sit under a savepoint taken lazily at its first write, so a failing op
    # leaves nothing behind and an op that writes nothing costs nothing.
    def begin_op(self) -> None:
        self._op_active = True
        self._op_savepoint = False

    def end_op(self) -> None:
        if self._op_savepoint:
            self.db.execute("RELEASE op")
        self._op_active = self._op_savepoint = False

    def abort_op(self) -> None:
        if self._op_savepoint:
            self.db.execute("ROLLBACK TO op")
            self.db.execute("RELEASE op")
        self._op_active = self._op_savepoint = False

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row | tuple]:
        return self.db.execute(sql, params).fetchall()

    def read_one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        return self.db.execute(sql, params).fetchone()

    def commit(self) -> bool:
        """Commit the tick's transaction; return True when there was one."""
        if not self.in_tx:
            return False
        self.db.execute("COMMIT")
        self.in_tx = False
        self.commits += 1
        return True

    def rollback(self) -> None:
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
