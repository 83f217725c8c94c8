"""The Ed25519 key that signs tree heads: read from AUDIT_SIGNING_KEY_FILE (PEM, PKCS#8), or
made on first boot in the instance folder; never in the database, which holds only its public
half (`audit_signing_key`, listed by /v1/logs/keys and `flask audit keys`).

Rotation: point AUDIT_SIGNING_KEY_FILE at a new key and restart. The first process to sign
with it lists it and marks every other listed key retired; retired keys stay listed, so the
heads they signed still verify.
"""

import base64
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from sqlalchemy.dialects import postgresql, sqlite

from backend.audit import notes
from backend.clock import rfc3339
from backend.models import SigningKey, TreeHead

logger = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "audit-tree-key.pem"
NEW_KEY_NOTICE = "made a new tree-head signing key in %s (keep a copy off this machine)"


class KeyFileError(RuntimeError):
    """AUDIT_SIGNING_KEY_FILE cannot be read as an Ed25519 private key."""


@dataclass(frozen=True)
class TreeSigner:
    """Signs the tree's heads as the log `origin` (also the key's name in the notes); `made`:
    the key file this process created (None: it was there)."""

    private_key: Ed25519PrivateKey
    origin: str
    made: Path | None = None

    @property
    def public(self) -> notes.VerifierKey:
        """The verifier key auditors hold."""
        return notes.VerifierKey(self.origin, notes.public_bytes(self.private_key))

    def head(self, tree_size: int, root_hash: str, created_at: datetime) -> dict:
        """A row of `audit_tree_head`: the tree at `tree_size` signed now."""
        text = notes.checkpoint_text(self.origin, tree_size, root_hash)
        return {
            "tree_size": tree_size,
            "root_hash": root_hash,
            "created_at": created_at,
            "key_id": self.public.key_id,
            "checkpoint": notes.sign(text, self.origin, self.private_key),
        }


def load_or_create(path: Path, created: bool = False) -> Ed25519PrivateKey:
    """The private key in the PEM file `path`; with `created`, a new one written there first
    (0600) when the file does not exist, with a one-line notice."""
    if created and not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it first: use that one
            return load_or_create(path)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        # Logged, not printed: the boot prints it once (backend/boot.py, new_key_notice).
        logger.info(NEW_KEY_NOTICE, path)
        return key
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise KeyFileError(f"AUDIT_SIGNING_KEY_FILE {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"AUDIT_SIGNING_KEY_FILE {path} is not an Ed25519 private key")
    return key


def key_path(app) -> Path:
    """AUDIT_SIGNING_KEY_FILE, or the key file of the instance folder."""
    configured = app.config.get("AUDIT_SIGNING_KEY_FILE")
    return Path(configured) if configured else Path(app.instance_path) / DEFAULT_KEY_FILE


def signer_for(app) -> TreeSigner:
    """The app's signer: AUDIT_SIGNING_KEY_FILE, or the instance folder's key (made if need be)."""
    path, created = key_path(app), not app.config.get("AUDIT_SIGNING_KEY_FILE")
    existed = path.exists()
    key = load_or_create(path, created)
    return TreeSigner(key, app.config["AUDIT_LOG_ORIGIN"], None if existed else path)


def register(connection: sa.Connection, signer: TreeSigner, now: datetime) -> None:
    """List the signer's public key (once: processes starting together may race here),
    retiring every other listed key."""
    key = signer.public
    if connection.scalar(sa.select(SigningKey.id).where(SigningKey.key_id == key.key_id)):
        return
    connection.execute(
        sa.update(SigningKey)
        .where(SigningKey.retired_at.is_(None), SigningKey.key_id != key.key_id)
        .values(retired_at=now)
    )
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(SigningKey)
        .values(key_id=key.key_id, name=key.name, public_key=_b64(key.public_key), created_at=now)
        .on_conflict_do_nothing(index_elements=["key_id"])
    )


def listed_keys(connection: sa.Connection) -> list[dict]:
    """Every listed key, oldest first, as /v1/logs/keys answers (the auditor's KEYS.json)."""
    keys = connection.execute(sa.select(SigningKey.__table__).order_by(SigningKey.id))
    return [
        {
            "key_id": key.key_id,
            "algorithm": "Ed25519",
            "public_key": key.public_key,
            "name": key.name,
            "verifier_key": notes.VerifierKey(key.name, _unb64(key.public_key)).vkey,
            "created_at": rfc3339(key.created_at),
            "retired_at": rfc3339(key.retired_at) if key.retired_at else None,
        }
        for key in keys
    ]


# Made once: every proof asks it (a statement made per call costs more than its answer).
LATEST_HEAD = (
    sa.select(TreeHead.__table__).order_by(TreeHead.tree_size.desc(), TreeHead.id.desc()).limit(1)
)


def latest_head(connection: sa.Connection) -> sa.Row | None:
    """The signed tree head of the largest size, None before the first."""
    return connection.execute(LATEST_HEAD).first()


def all_heads(connection: sa.Connection) -> list[dict]:
    """Every signed tree head, oldest first, as the API answers them."""
    query = sa.select(TreeHead.__table__).order_by(TreeHead.id)
    return [head_as_json(head) for head in connection.execute(query)]


def head_as_json(head: sa.Row) -> dict:
    """A tree head as GET /v1/logs/tree-head answers it."""
    return {
        "tree_size": head.tree_size,
        "root_hash": head.root_hash,
        "timestamp": rfc3339(head.created_at),
        "checkpoint": head.checkpoint,
    }


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
