"""Signing the chain's head on demand (`flask audit anchor`): an HMAC checkpoint and a signed
tree head; and the anchor file of every HMAC checkpoint that `flask audit verify --anchor`
checks the trail against, kept outside the database."""

import json
from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from backend.audit import chain, merkle
from backend.audit.signing import TreeSigner
from backend.clock import rfc3339, utcnow
from backend.models import AuditChain, Checkpoint, TreeHead


def anchor(connection: sa.Connection, key: bytes) -> dict | None:
    """Sign the chain's head now; return the checkpoint (None on an empty trail)."""
    head = chain.lock_head(connection)
    if not head.last_id:
        return None
    checkpoint = chain.sign(key, head.last_id, head.last_hash, utcnow(), "anchor")
    connection.execute(sa.insert(Checkpoint), checkpoint)
    return checkpoint


def sign_tree_head(connection: sa.Connection, signer: TreeSigner) -> dict | None:
    """Sign the Merkle tree's head now (in the caller's transaction, under the chain's lock);
    return the tree head (None on an empty trail)."""
    head = chain.lock_head(connection)
    if not head.last_id:
        return None
    now = utcnow()
    signed = signer.head(head.last_id, merkle.root(merkle.unpack(head.tree_frontier)), now)
    connection.execute(sa.insert(TreeHead), signed)
    connection.execute(sa.update(AuditChain).where(AuditChain.id == 1).values(tree_head_at=now))
    return signed


def checkpoints_file(connection: sa.Connection) -> Iterator[str]:
    """Every checkpoint as a JSON line: the anchor file for `verify --anchor`."""
    query = sa.select(
        Checkpoint.log_id,
        Checkpoint.log_hash,
        Checkpoint.created_at,
        Checkpoint.reason,
        Checkpoint.mac,
    ).order_by(Checkpoint.id)
    for row in connection.execute(query).mappings():
        yield json.dumps({**row, "created_at": rfc3339(row["created_at"])}) + "\n"


def read_anchors(lines: Iterable[str]) -> list[dict]:
    """The checkpoints of an anchor file."""
    return [json.loads(line) for line in lines if line.strip()]
