"""Password hashing and bearer-token material.

Passwords: argon2id at the OWASP Password Storage Cheat Sheet's minimum (19 MiB, t=2, p=1).
Tokens: 256 random bits; only their SHA-256 digest is stored, so a copy of the database
holds no usable token.
"""

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from backend.concurrency import OffTheLoop

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the user does not exist, so that path costs what a real check costs.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


# Two hashes at a time per process bound a worker's memory and still keep the CPUs busy.
# (figures: docs/benchmarks.md, "Tuning decisions")
_hashing = OffTheLoop(2)


def hash_password(password: str) -> str:
    """An argon2id hash of `password`, in PHC string form."""
    return _hashing(_hasher.hash, password)


def check_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; with no hash (unknown user) burn the same time, say no."""
    try:
        matches = _hashing(_hasher.verify, password_hash or _DUMMY_HASH, password)
        return matches and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with other parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> tuple[str, str]:
    """A fresh opaque token for the client and the digest to store: (token, digest)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()
