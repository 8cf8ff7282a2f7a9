"""state.shm: the shared service table agrees with a plain dict, and readers never trust a torn slot."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdcore.errors import OpError
from pdcore.shm import (
    DATA_OFFSET,
    RECORD_FIELDS,
    SLOT_SIZE,
    Fallback,
    ShmFirst,
    ShmReader,
    ShmWriter,
    lookup_service,
    record_from_row,
    record_row,
)
from pdcore.state.ports import Service, stable_hash


def record(ident: str, port: int, **fields) -> dict:
    rec = {"id": ident, **dict.fromkeys(RECORD_FIELDS), "port": port, "status": "assigned", "endpoints": {}}
    rec.update(fields)
    return rec


def put(w: ShmWriter, ident: str, rec: dict | None) -> None:
    w.put(ident, None if rec is None else record_row(rec))


def test_a_slot_row_stands_for_the_core_record_keys_in_order():
    svc = Service(id="a:b:c", port=4100, pid=7, pid_start=1.5, cmd="npm run dev", cwd="/w", metadata={"k": [1]},
                  pair="a:b:d", endpoints={"local": "http://x"}, created_at=10, updated_at=11, expires_at=12)
    rebuilt = record_from_row(svc.id, svc.shm_row())
    assert rebuilt == svc.to_dict()
    assert list(rebuilt) == list(svc.to_dict())


def test_put_get_delete(tmp_path):
    w = ShmWriter(tmp_path / "s.shm", slot_count=64)
    r = ShmReader(tmp_path / "s.shm")
    put(w, "a:b", record("a:b", 3000))
    assert r.service("a:b") == record("a:b", 3000)
    assert r.service("nope:x") is None
    put(w, "a:b", None)
    assert r.service("a:b") is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([f"p{i}:s" for i in range(40)]), st.booleans()), max_size=200))
def test_table_matches_a_dict_under_any_sequence(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("shm") / "s.shm"
    w = ShmWriter(path, slot_count=64)
    r = ShmReader(path)
    model: dict[str, dict] = {}
    for n, (ident, live) in enumerate(steps):
        if live:
            model[ident] = record(ident, 3000 + n)
            put(w, ident, model[ident])
        else:
            model.pop(ident, None)
            put(w, ident, None)
    for i in range(40):
        assert r.service(f"p{i}:s") == model.get(f"p{i}:s")


def test_torn_slot_makes_the_reader_fall_back(tmp_path):
    w = ShmWriter(tmp_path / "s.shm", slot_count=16)
    put(w, "t:x", record("t:x", 4000))
    index = stable_hash("t:x") % 16
    off = DATA_OFFSET + index * SLOT_SIZE
    w.mm[off + 20] ^= 0xFF  # flip a payload byte without the writer's protocol: CRC no longer matches
    with pytest.raises(Fallback):
        ShmReader(tmp_path / "s.shm").service("t:x")
    struct.pack_into("<I", w.mm, off, 7)  # odd sequence: a write in progress
    with pytest.raises(Fallback):
        ShmReader(tmp_path / "s.shm").service("t:x")


def test_oversize_record_and_full_table_fall_back(tmp_path):
    w = ShmWriter(tmp_path / "s.shm", slot_count=4)
    put(w, "big:x", record("big:x", 4001, metadata={"k": "v" * 1000}))
    r = ShmReader(tmp_path / "s.shm")
    with pytest.raises(Fallback):
        r.service("big:x")
    for i in range(4):
        put(w, f"f{i}:x", record(f"f{i}:x", 5000 + i))
    with pytest.raises(Fallback):
        r.service("f0:x")


def test_reader_follows_a_new_file(tmp_path):
    put(ShmWriter(tmp_path / "s.shm", slot_count=16), "old:x", record("old:x", 1))
    r = ShmReader(tmp_path / "s.shm")
    assert r.service("old:x")["port"] == 1
    w2 = ShmWriter(tmp_path / "s.shm", slot_count=16)  # a restarted core makes a new file
    put(w2, "new:x", record("new:x", 2))
    assert r.service("old:x") is None and r.service("new:x")["port"] == 2


def test_lookup_refuses_like_the_core(tmp_path):
    ShmWriter(tmp_path / "s.shm", slot_count=16)
    reader = ShmReader(tmp_path / "s.shm")
    with pytest.raises(OpError) as bad:
        lookup_service(reader, "not valid!")
    assert bad.value.code == "invalid_identity"
    with pytest.raises(OpError) as missing:
        lookup_service(reader, "a:b")
    assert missing.value.code == "not_found"
    assert ShmFirst(tmp_path / "absent.shm").try_call("port.get", {"id": "a:b"}) is None
