"""Note encryption at rest: AES-256-GCM under `master.key`, and the per-session hash chain.

The key file is 32 raw random bytes, mode 0600, created once with O_EXCL. It is never
regenerated: a missing key while encrypted notes exist, a key of the wrong length, or a key
readable by others stops the daemon with `MasterKeyError` (a new key would make every stored
note unreadable, and a readable key is no secret). `state.db` keeps `key_check(key)`, so a
wrong key of the right length is refused at start too (pdcore.startcheck).

Each note gets a fresh random 96-bit nonce; its associated data binds the ciphertext to its
note id and session id, so a ciphertext moved to another row does not decrypt. The chain link
of a note is an HMAC-SHA256 (key derived from the master key) over the previous link and the
note's stored fields, ciphertext included: verifiable without decrypting, and not forgeable
or guessable by someone holding only the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pdcore.privatefile import PrivateFileError, read_private

KEY_BYTES = 32
NONCE_BYTES = 12
GENESIS = "0" * 64  # the "previous link" of a session's first note
_AD_PREFIX = b"pd-note-v1\x00"


class MasterKeyError(RuntimeError):
    """The master key cannot be used; the message says what is wrong and what to do."""


def load_or_create_key(path: Path, sealed_exist: bool) -> bytes:
    """Return the master key at `path`, creating it (0600, O_EXCL) only when nothing sealed exists yet.

    `sealed_exist`: the database holds something sealed with the key (notes, webhook secrets).
    """
    try:
        return read_key(path)
    except FileNotFoundError:
        if sealed_exist:
            raise MasterKeyError(
                f"master key {path} is missing but encrypted notes or webhook secrets exist in the database; "
                "restore the key file from a backup (a new key would make them unreadable)"
            ) from None
        return _create_key(Path(path))


def read_key(path: Path) -> bytes:
    """The master key at `path`, checked (regular file, ours, 0600, 32 bytes); never creates or changes it.

    Raises FileNotFoundError when there is none, MasterKeyError when it cannot be used.
    """
    try:
        key = read_private(Path(path), "master key", KEY_BYTES + 1)
    except PrivateFileError as exc:
        raise MasterKeyError(str(exc)) from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(
            f"master key {path} is {len(key)} bytes long; it must be exactly {KEY_BYTES} bytes "
            "(restore the original key file)"
        )
    return key


def key_check(key: bytes) -> str:
    """A value that tells whether a key is the one a database was sealed with, and nothing more.

    HKDF of the key under a label of its own: stored in `state.db`, it reveals nothing about the
    key, the note cipher or the chain key, and the same key always gives the same value.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pd-master-key-check-v1").derive(key).hex()


def _create_key(path: Path) -> bytes:
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another process created it between our open and here
        return load_or_create_key(path, sealed_exist=True)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def associated_data(note_id: int, session_id: str) -> bytes:
    return _AD_PREFIX + str(note_id).encode() + b"\x00" + session_id.encode()


class NoteCipher:
    """Encrypts and authenticates note bodies, and computes the chain links."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._chain_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pd-note-chain-v1").derive(key)

    def encrypt(self, note_id: int, session_id: str, plaintext: str) -> tuple[bytes, bytes]:
        """Return (nonce, ciphertext-with-tag) for a note body."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), associated_data(note_id, session_id))

    def decrypt(self, note_id: int, session_id: str, nonce: bytes, ciphertext: bytes) -> str | None:
        """The note body, or None when the ciphertext does not authenticate under this key."""
        try:
            return self._aead.decrypt(nonce, ciphertext, associated_data(note_id, session_id)).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            return None

    def seal(self, associated: bytes, plaintext: str) -> bytes:
        """`nonce + ciphertext-with-tag` of a short secret that is not a note (a webhook secret).

        `associated` must name the purpose and the row (e.g. b"pd-webhook-secret-v1\\x00" + id),
        so the sealed value opens nowhere else; note associated data cannot collide with it.
        """
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), associated)

    def unseal(self, associated: bytes, sealed: bytes) -> str | None:
        """The secret sealed by `seal`, or None when it does not authenticate under this key and row."""
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            return None

    def link(self, prev: str, note_id: int, session_id: str, agent_id: str | None, type_: str,
             created_at: int, nonce: bytes, ciphertext: bytes) -> str:
        """The chain link of a note: HMAC over the previous link and every stored field."""
        mac = hmac.new(self._chain_key, digestmod=hashlib.sha256)
        for part in (prev.encode(), str(note_id).encode(), session_id.encode(), (agent_id or "").encode(),
                     type_.encode(), str(created_at).encode(), nonce, ciphertext):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.hexdigest()
