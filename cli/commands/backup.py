"""pd backup DIR | pd restore DIR: a consistent copy of the state while the daemon runs, and its return."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click

from cli.common import fail, options, output, output_options
from pdcore.paths import check_home, socket_answers, supervisor_running

DB_NAME = "state.db"
KEY_NAME = "master.key"
COUNTED = ("services", "sessions", "notes", "agents", "locks", "tuples")


def _copy_private(src: Path, dst: Path, exclusive: bool = False) -> None:
    """Copy `src` to `dst`, readable by the owner alone (0600), durably; streamed, any size."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(dst, flags, 0o600)
    with open(src, "rb") as source, os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
        target.flush()
        os.fsync(target.fileno())
    os.chmod(dst, 0o600)


def _usable_key(path: Path) -> None:
    """Refuse a master key the daemon would refuse (owner, mode 0600, size), in one line."""
    from pdcore.crypto import MasterKeyError, load_or_create_key

    try:
        load_or_create_key(path, sealed_exist=True)  # never creates: it only reads and checks
    except MasterKeyError as exc:
        fail(str(exc))


def _check_copy(path: Path) -> dict[str, int]:
    """integrity_check a database copy and count what it holds; fail in one line if it is damaged."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in COUNTED if t in tables}
        finally:
            db.close()
    except sqlite3.Error as exc:
        fail(f"{path} is not a readable Port Daddy database: {exc}")
    if verdict != "ok":
        fail(f"{path} failed SQLite's integrity check: {verdict}")
    return counts


def _private_dir(path: Path) -> None:
    """Create `path` 0700, or accept it if it is ours and closed to others (it holds the key)."""
    problem = check_home(path, create=True)
    if problem:
        fail(f"backup folder: {problem} (a backup holds the master key: its folder must be closed to others)")


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-key", is_flag=True, help="Leave master.key out (notes in the copy cannot be read without it).")
@click.option("--force", is_flag=True, help="Overwrite a backup already in DEST.")
@output_options
def backup(dest: Path, no_key: bool, force: bool) -> None:
    """Copy the state into folder DEST while the daemon keeps running.

    state.db is copied with SQLite's online backup: one consistent snapshot holding every write
    committed (so acknowledged) up to that instant, then checked with integrity_check.
    master.key, which decrypts the notes, is copied too unless --no-key: DEST must be as
    private as the home (0700). `pd restore DEST` puts it back.
    """
    import sqlite3

    config = options().config
    db_path = Path(config.db_path)
    if not db_path.exists():
        fail(f"nothing to back up: {db_path} does not exist yet (the daemon creates it on first start)")
    _private_dir(dest)
    target, tmp = dest / DB_NAME, dest / f".{DB_NAME}.{os.getpid()}.tmp"
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to overwrite it, or choose another folder")
    try:
        source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        copy = sqlite3.connect(tmp)
        try:
            source.backup(copy)  # one step: a single read snapshot of the WAL database
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (the daemon turns WAL back on)
        finally:
            copy.close()
            source.close()
        os.chmod(tmp, 0o600)
        counts = _check_copy(tmp)
        os.replace(tmp, target)
    except sqlite3.Error as exc:
        fail(f"could not copy {db_path}: {exc}")
    finally:
        if tmp.exists():
            tmp.unlink()
    key_copied = False
    key_path = Path(config.key_path)
    if not no_key and key_path.exists():
        _usable_key(key_path)
        _copy_private(key_path, dest / KEY_NAME)
        key_copied = True
    result = {"path": str(dest), "stateDb": str(target), "bytes": target.stat().st_size, "masterKey": key_copied,
              "counts": counts}
    output(result, lambda r: f"backed up {r['bytes']} bytes to {r['stateDb']}"
           + (" with master.key" if r["masterKey"] else " (no master.key: notes in it need the current key)")
           + "; " + ", ".join(f"{n} {t}" for t, n in r["counts"].items()), quiet=str(dest))


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_options
def restore(src: Path) -> None:
    """Put back the state saved by `pd backup SRC`; the daemon must be stopped.

    The current state.db (with its -wal and -shm files) and, when SRC holds one, master.key are
    renamed to NAME.before-restore-TIME, never deleted. Then `pd start`.
    """
    config = options().config
    running = supervisor_running(config)
    if running or socket_answers(Path(config.ipc)):
        fail(f"the daemon is running{f' (pid {running})' if running else ''}; stop it first (pd stop), "
             "then pd restore, then pd start")
    backup_db = src / DB_NAME
    if not backup_db.is_file():
        fail(f"{src} holds no {DB_NAME}: not a folder written by pd backup")
    counts = _check_copy(backup_db)
    backup_key = src / KEY_NAME
    home_db, home_key = Path(config.db_path), Path(config.key_path)
    if not backup_key.is_file() and not home_key.exists() and counts.get("notes"):
        fail(f"{src} holds no master.key and this home has none: its {counts['notes']} notes could not be read")
    if backup_key.is_file():
        _usable_key(backup_key)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = []
    for path in (home_db, Path(f"{home_db}-wal"), Path(f"{home_db}-shm"), *([home_key] if backup_key.is_file() else [])):
        if path.exists():
            aside = path.with_name(f"{path.name}.before-restore-{stamp}")
            os.replace(path, aside)
            kept.append(str(aside))
    home_db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _copy_private(backup_db, home_db, exclusive=True)
    if backup_key.is_file():
        _copy_private(backup_key, home_key, exclusive=True)
    result = {"restoredFrom": str(src), "stateDb": str(home_db), "masterKey": backup_key.is_file(),
              "keptAside": kept, "counts": counts}
    output(result, lambda r: f"restored {r['stateDb']} from {r['restoredFrom']}"
           + (" with its master.key" if r["masterKey"] else "")
           + "; " + ", ".join(f"{n} {t}" for t, n in r["counts"].items())
           + ("\nkept aside: " + ", ".join(r["keptAside"]) if r["keptAside"] else "")
           + "\nnext: pd start", quiet=str(home_db))


def register(cli: click.Group) -> None:
    for cmd in (backup, restore):
        cli.add_command(cmd)
