"""Before the core opens state.db: is it the state this home had, and is master.key its key?

A home has held data once its `master.key` exists (the daemon makes the key at its first
start, beside the new database). Such a home must have a `state.db` that is there, is not
empty and passes SQLite's `quick_check` (stopped after `db_start_check_max_ms`, so start-up
stays bounded on a large database). The database records `key_check(master key)` in its
`meta` table, so a wrong key of the right length is refused; a database made before that
record existed gets it at its first start, once the key has opened a note or a sealed webhook
secret (when it holds any). Every check only reads: a refused start writes nothing (no new
database, no WAL, the key untouched). `pd start --new-state` starts afresh on purpose: the
damaged files are moved aside as `NAME.broken-TIME`, never deleted.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import time
from pathlib import Path

from pdcore.config import Config
from pdcore.crypto import MasterKeyError, NoteCipher, key_check, read_key
from pdcore.store import KEY_CHECK

SEALED_SAMPLE = 3  # newest notes (and sealed webhook secrets) tried on a database without a key check


class StartRefused(Exception):
    """The state cannot be trusted: `problem` says what is wrong, `fix` what to do; str() is one line."""

    def __init__(self, kind: str, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.kind = kind  # key_file, team_key, key_missing, key_wrong, db_missing, db_empty, db_corrupt
        self.problem = problem
        self.fix = fix

    @property
    def can_start_afresh(self) -> bool:
        """Moving the state aside helps (it does not for a key file that is unsafe or malformed)."""
        return self.kind not in ("key_file", "team_key")


def _restore_or_afresh(db: Path) -> str:
    aside = f" (moves {db.name} aside, never deletes it)" if db.exists() else ""
    return (f"restore a backup with `pd restore DIR` (made by `pd backup`), or start afresh on purpose with "
            f"`pd start --new-state`{aside}")


def check_state(config: Config) -> None:
    """Refuse (StartRefused) a state the daemon must not serve; return when it may start. Reads only."""
    if config.team_servers and config.team_key_file is not None:
        from pdcore.team.keyfile import TeamKeyError, read_key_file

        try:
            read_key_file(Path(config.team_key_file))
        except TeamKeyError as exc:
            raise StartRefused("team_key", str(exc), "or pd team join again with --key-file") from None
    db, key_path = Path(config.db_path), Path(config.key_path)
    try:
        key: bytes | None = read_key(key_path)
    except FileNotFoundError:
        key = None
    except MasterKeyError as exc:
        raise StartRefused("key_file", str(exc)) from None
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        if key is None:
            return  # a new home: the core makes both
        raise StartRefused("db_missing", f"{db} is missing but this home has held data ({key_path} exists)",
                           _restore_or_afresh(db)) from None
    if size == 0:
        raise StartRefused("db_empty", f"{db} is empty (0 bytes)" +
                           (f" but this home has held data ({key_path} exists)" if key is not None else ""),
                           _restore_or_afresh(db))
    conn = _open_read_only(db)
    try:
        _quick_check(conn, db, config.db_start_check_max_ms)
        _check_key(conn, db, key_path, key)
    except sqlite3.DatabaseError as exc:
        raise StartRefused("db_corrupt", f"{db} cannot be read as a Port Daddy database ({exc})",
                           _restore_or_afresh(db)) from None
    finally:
        conn.close()


def _open_read_only(db: Path) -> sqlite3.Connection:
    """A connection that writes nothing: `immutable` when no WAL is left (nothing else writes while
    the daemon is stopped, and a read-only WAL open would create -wal and -shm files), else `mode=ro`
    (the WAL holds committed writes; its files exist already)."""
    wal = Path(f"{db}-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    return sqlite3.connect(f"file:{db}?{mode}", uri=True, timeout=5)


def _quick_check(conn: sqlite3.Connection, db: Path, max_ms: int) -> None:
    """SQLite's quick_check, stopped (as passed) after `max_ms`; 0 skips it."""
    if max_ms <= 0:
        return
    deadline = time.monotonic() + max_ms / 1000
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline and "interrupt" in str(exc):
            return  # the rest is checked by the next start with more time, or by `pd doctor`
        raise
    finally:
        conn.set_progress_handler(None, 0)
    verdict = "; ".join(str(r[0]) for r in rows)
    if verdict != "ok":
        raise StartRefused("db_corrupt", f"{db} failed SQLite's quick_check ({verdict[:200]})",
                           _restore_or_afresh(db))


def _check_key(conn: sqlite3.Connection, db: Path, key_path: Path, key: bytes | None) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    recorded = None
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,)).fetchone()
        recorded = row[0] if row else None
    if recorded is None:
        sealed = _sealed_sample(conn, tables)
        if not sealed:
            return  # nothing sealed yet: the core records this key's check
        if key is None:
            raise _key_missing(db, key_path)
        cipher = NoteCipher(key)
        if not any(opens(cipher) for opens in sealed):
            raise _key_wrong(db, key_path)
        return  # it opens what is sealed: the core records its check
    if key is None:
        raise _key_missing(db, key_path)
    if not hmac.compare_digest(str(recorded), key_check(key)):
        raise _key_wrong(db, key_path)


def _sealed_sample(conn: sqlite3.Connection, tables: set[str]) -> list:
    """Tests (cipher -> bool) that a key opens the newest sealed rows: notes, webhook secrets."""
    from pdcore.state.webhooks import open_secret  # its sealing format lives there

    tests: list = []
    if "notes" in tables:
        for note_id, session_id, nonce, ciphertext in conn.execute(
                "SELECT id, session_id, CAST(nonce AS BLOB), CAST(ciphertext AS BLOB) FROM notes "
                "ORDER BY id DESC LIMIT ?", (SEALED_SAMPLE,)):
            tests.append(lambda c, a=(note_id, session_id, nonce, ciphertext): c.decrypt(*a) is not None)
    if "webhooks" in tables:
        for hook_id, secret in conn.execute("SELECT id, secret FROM webhooks WHERE typeof(secret) = 'blob' "
                                            "ORDER BY rowid DESC LIMIT ?", (SEALED_SAMPLE,)):
            tests.append(lambda c, h=hook_id, s=secret: open_secret(c, h, s) is not None)
    return tests


def _key_missing(db: Path, key_path: Path) -> StartRefused:
    return StartRefused("key_missing", f"master key {key_path} is missing but {db} holds data sealed with one",
                        f"put the key file back (`pd restore DIR` from a backup holding both), or start afresh "
                        f"on purpose with `pd start --new-state` (moves {db.name} aside)")


def _key_wrong(db: Path, key_path: Path) -> StartRefused:
    return StartRefused("key_wrong", f"master key {key_path} is not the key {db} was sealed with",
                        f"put the right key file back (`pd restore DIR` from a backup holding both), or start "
                        f"afresh on purpose with `pd start --new-state` (moves {db.name} aside, keeps this key)")


def set_aside(config: Config) -> list[Path]:
    """Move state.db and its -wal/-shm files to NAME.broken-TIME (never deleted); return the new paths."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    db = Path(config.db_path)
    moved = []
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            aside = path.with_name(f"{path.name}.broken-{stamp}")
            os.replace(path, aside)
            moved.append(aside)
    return moved


def start_afresh(config: Config) -> list[Path]:
    """`pd start --new-state`: set the refused state aside and make a new, empty one under this home's key
    (a new key when there is none), so the next start passes the checks. Returns what was moved aside."""
    from pdcore.crypto import load_or_create_key
    from pdcore.store import Store

    moved = set_aside(config)
    key = load_or_create_key(Path(config.key_path), sealed_exist=False)
    store = Store(config.db_path, config.db_synchronous)
    try:
        store.migrate()
        store.set_meta(KEY_CHECK, key_check(key))
    finally:
        store.close()
    return moved

