"""`state.shm`: the service table in shared memory, for lookups that skip the socket.

The core (the only writer) keeps an open-addressing hash table of services in an mmapped
file; readers (the SDK, HTTP workers) answer `port.get` from it with no round trip.

Layout (little-endian):

    header   64 bytes   magic "PDSHM002" | slot_count u32 | slot_size u32 | flags u32 | pad
    slots    slot_count x slot_size, from offset 4096
    slot     seq u32 | crc32 u32 | state u8 (0 empty, 1 live, 2 deleted, 3 oversize) | pad u8 |
             len u16 | payload: MessagePack [identity, row] (len bytes)
    row      the service record's values in RECORD_FIELDS order (names are not repeated in
             every slot, so typical records fit a 256-byte slot and fewer pages are touched)

Every slot is guarded by its own sequence number (odd while being written) and a CRC-32 of
state, length and payload, so a reader never acts on a torn record: it re-reads, and after a
few failed tries falls back to IPC. The core writes the slots of a tick's changes after the
tick's commit and before its replies, so whatever a client was told is already visible here.
A record too large for a slot, or a table too full, sets the `incomplete` flag (or stores a
marker), and readers fall back to IPC: the file is an optimisation and every answer it gives
equals the core's.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from pdcore.identity import stable_hash

MAGIC = b"PDSHM002"
HEADER = struct.Struct("<8sIII")
SLOT_HEAD = struct.Struct("<IIBBH")
_SEQ = struct.Struct("<I")
_CRC_HEAD = struct.Struct("<BBB")  # state, length low byte, length high byte: what the CRC covers first
_pack = msgpack.Packer(use_bin_type=True).pack
DATA_OFFSET = 4096
FLAG_INCOMPLETE = 1
EMPTY, LIVE, DELETED, OVERSIZE = 0, 1, 2, 3
MAX_LOAD = 0.75
SLOT_SIZE = 256
# A service record (port.get's `service`) is {"id": identity, **zip(RECORD_FIELDS, row)}.
RECORD_FIELDS = ("port", "pid", "cmd", "cwd", "status", "metadata", "pair", "endpoints", "createdAt", "lastSeen",
                 "expiresAt")
READ_TRIES = 4


class Fallback(Exception):
    """The shared table cannot answer this lookup; ask the core."""


class ShmWriter:
    """The core's side: create the file afresh at start, then keep slots in step with services."""

    def __init__(self, path: Path, slot_count: int = 131072, slot_size: int = SLOT_SIZE) -> None:
        self.path = Path(path)
        self.slot_count = slot_count
        self.slot_size = slot_size
        self.payload_max = slot_size - SLOT_HEAD.size
        tmp = self.path.with_suffix(".shm.tmp")
        size = DATA_OFFSET + slot_count * slot_size
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: untouched slots cost no memory
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.mm[0:HEADER.size] = HEADER.pack(MAGIC, slot_count, slot_size, 0)
        os.replace(tmp, self.path)  # readers of an older file notice the new inode
        self.where: dict[str, int] = {}  # identity -> slot index
        self.used = 0  # slots ever written (live or deleted): they lengthen probe chains
        self.incomplete = False

    def _slot_offset(self, index: int) -> int:
        return DATA_OFFSET + index * self.slot_size

    def _write_slot(self, index: int, state: int, payload: bytes) -> None:
        off = DATA_OFFSET + index * self.slot_size
        mm = self.mm
        size = len(payload)
        odd = (_SEQ.unpack_from(mm, off)[0] + 1) | 1
        crc = zlib.crc32(payload, zlib.crc32(_CRC_HEAD.pack(state, size & 0xFF, size >> 8)))
        SLOT_HEAD.pack_into(mm, off, odd, crc, state, 0, size)  # odd sequence: being written
        mm[off + SLOT_HEAD.size:off + SLOT_HEAD.size + size] = payload
        _SEQ.pack_into(mm, off, odd + 1)  # even: stable

    def _mark_incomplete(self) -> None:
        self.incomplete = True
        self.mm[0:HEADER.size] = HEADER.pack(MAGIC, self.slot_count, self.slot_size, FLAG_INCOMPLETE)

    def put(self, identity: str, row: Sequence[Any] | None) -> None:
        """Publish the record of `identity` (its values in RECORD_FIELDS order), or its absence (None)."""
        if self.incomplete:
            return
        index = self.where.get(identity)
        if row is None:
            if index is not None:
                self._write_slot(index, DELETED, b"")
                del self.where[identity]
            return
        payload = _pack([identity, row])
        state = LIVE
        if len(payload) > self.payload_max:
            payload, state = _pack([identity, None]), OVERSIZE
        if index is None:
            index = self._free_slot(identity)
            if index < 0:
                self._mark_incomplete()
                return
            self.where[identity] = index
        self._write_slot(index, state, payload)

    def _free_slot(self, identity: str) -> int:
        """The first deleted or empty slot on the identity's probe chain (-1 when too full).

        Reusing a deleted slot is safe: a reader looking for another identity steps over it,
        and one looking for this identity finds it before the chain's first empty slot.
        """
        n = self.slot_count
        i = stable_hash(identity) % n
        for _ in range(n):
            state = self.mm[self._slot_offset(i) + 8]
            if state == DELETED:
                return i
            if state == EMPTY:
                if self.used + 1 > n * MAX_LOAD:
                    return -1
                self.used += 1
                return i
            i = (i + 1) % n
        return -1

    def close(self) -> None:
        self.mm.close()


class ShmReader:
    """A reader's side: `service(identity)` answers like op `port.get`, or raises Fallback."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.mm: mmap.mmap | None = None
        self.inode = -1

    def _map(self) -> mmap.mmap:
        try:
            st = os.stat(self.path)
        except OSError:
            raise Fallback("no shared table") from None
        if self.mm is None or st.st_ino != self.inode:
            if self.mm is not None:
                self.mm.close()
                self.mm = None
            with open(self.path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.inode = st.st_ino
        return self.mm

    def service(self, identity: str) -> dict | None:
        """The service record of `identity`, None when it holds no claim; Fallback when unsure."""
        mm = self._map()
        magic, slot_count, slot_size, flags = HEADER.unpack_from(mm, 0)
        if magic != MAGIC or flags & FLAG_INCOMPLETE or slot_count == 0:
            raise Fallback("shared table incomplete")
        i = stable_hash(identity) % slot_count
        for _ in range(slot_count):
            state, body = self._read_slot(mm, DATA_OFFSET + i * slot_size)
            if state == EMPTY:
                return None
            if state in (LIVE, OVERSIZE):
                ident, row = msgpack.unpackb(body, raw=False)
                if ident == identity:
                    if state == OVERSIZE:
                        raise Fallback("record larger than a slot")
                    if not isinstance(row, list) or len(row) != len(RECORD_FIELDS):
                        raise Fallback("slot written in another layout")
                    return record_from_row(ident, row)
            i = (i + 1) % slot_count
        return None

    @staticmethod
    def _read_slot(mm: mmap.mmap, off: int) -> tuple[int, bytes]:
        for _ in range(READ_TRIES):
            seq1, crc, state, _pad, length = SLOT_HEAD.unpack_from(mm, off)
            if seq1 & 1:
                continue
            body = mm[off + SLOT_HEAD.size:off + SLOT_HEAD.size + length]
            (seq2,) = struct.unpack_from("<I", mm, off)
            if seq1 != seq2:
                continue
            if state == EMPTY and seq1 == 0:
                return EMPTY, b""
            if zlib.crc32(body, zlib.crc32(bytes((state, length & 0xFF, length >> 8)))) != crc:
                continue
            return state, body
        raise Fallback("slot kept changing")

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None


def lookup_service(reader: ShmReader, identity: str) -> dict:
    """`port.get` answered from shared memory: the same result or the same error as the core."""
    from pdcore.errors import OpError
    from pdcore.ops.schema import check_identity

    check_identity(identity, "id")  # same refusal as the core's validator
    record = reader.service(identity)
    if record is None:
        raise OpError("not_found", f"no service {identity}", "id")
    return {"service": record}


class ShmFirst:
    """Answer the operations state.shm can answer from it; send everything else to `call`.

    Used by the SDK and by the HTTP workers; any doubt (no file, torn slot, record too big,
    table incomplete) falls through to the core.
    """

    def __init__(self, path: Path) -> None:
        self.reader = ShmReader(path)

    def try_call(self, action: str, args: dict) -> dict | None:
        """The op's result from shared memory, or None to ask the core. Raises OpError like the core."""
        if action != "port.get" or "id" not in args:
            return None
        try:
            return lookup_service(self.reader, args["id"])
        except Fallback:
            return None


def record_row(record: dict) -> tuple:
    """A service record's values in RECORD_FIELDS order (what a slot stores)."""
    return tuple(record[field] for field in RECORD_FIELDS)


def record_from_row(identity: str, row: Sequence[Any]) -> dict:
    """The service record a slot's row stands for, keys in the core's order."""
    record: dict[str, Any] = {"id": identity}
    record.update(zip(RECORD_FIELDS, row, strict=True))
    return record


def service_rows(ports: Any, identities: set[str]) -> list[tuple[str, tuple | None]]:
    """The current rows of changed identities (None for released ones), for the writer."""
    get = ports.trie.get
    out = []
    for ident in identities:
        svc = get(ident)
        out.append((ident, svc.shm_row() if svc is not None else None))
    return out
