"""The stable hash of an identity: the same on every machine and every run (not Python's hash()).

It places an identity's port (pdcore.state.ports) and its slot in state.shm (pdcore.shm); kept
apart so readers of state.shm need not import the state modules.
"""

import hashlib


def stable_hash(identity: str) -> int:
    """The identity's hash: the first 8 bytes of SHA-256, the same everywhere, every run."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
