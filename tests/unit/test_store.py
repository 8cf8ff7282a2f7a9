"""The store: migrations, staged writes, per-op rollback, group commit."""

import sqlite3

import pytest

from pdcore.store import Store, migration_files

INSERT = "INSERT INTO t (v) VALUES (?)"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s.db")
    s.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield s
    s.close()


def rows(store):
    return [r[0] for r in store.read("SELECT v FROM t ORDER BY id")]


def test_migrations_are_numbered_uniquely_and_apply_once(tmp_path):
    numbers = [n for n, _, _ in migration_files()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    s = Store(tmp_path / "m.db")
    assert s.migrate() == numbers
    assert s.migrate() == []


def test_staged_writes_are_seen_by_reads_and_kept_in_order(store):
    store.stage(INSERT, ("a",))
    store.write(INSERT, ("b",))
    store.stage(INSERT, ("c",))
    assert rows(store) == ["a", "b", "c"]
    assert store.commit()


def test_a_failed_op_leaves_nothing_behind(store):
    store.begin_op()
    store.stage(INSERT, ("kept",))
    store.end_op()
    store.begin_op()
    store.stage(INSERT, ("staged-then-dropped",))
    store.write(INSERT, ("written-then-rolled-back",))
    store.stage(INSERT, ("also-dropped",))
    store.abort_op()
    store.commit()
    assert rows(store) == ["kept"]


def test_nothing_is_visible_to_other_connections_before_commit(store, tmp_path):
    store.stage(INSERT, ("x",))
    store.flush_pending()
    other = sqlite3.connect(tmp_path / "s.db")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    store.commit()
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    other.close()


def test_checkpoint_from_another_connection(store):
    for i in range(100):
        store.stage(INSERT, (str(i),))
    store.commit()
    store.checkpoint()
    assert len(rows(store)) == 100


APPEND = "INSERT INTO t (v) VALUES (?)"


def test_appends_of_a_failed_op_are_dropped_and_others_kept(store):
    store.begin_op()
    store.append(APPEND, ("ok",))
    store.end_op()
    store.begin_op()
    store.append(APPEND, ("dropped",))
    store.abort_op()
    store.begin_op()
    store.append(APPEND, ("read-inside-op",))
    assert sorted(rows(store)) == ["ok", "read-inside-op"]  # a read flushes under the op's savepoint
    store.abort_op()
    store.commit()
    assert rows(store) == ["ok"]


def test_where_clause_skips_absent_filters():
    from pdcore.store import where_clause

    assert where_clause(("a = ?", None), ("b >= ?", 0)) == (" WHERE b >= ?", [0])
    assert where_clause(("a = ?", None)) == ("", [])
