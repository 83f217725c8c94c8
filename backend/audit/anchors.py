"""Signing the chain's head on demand (`flask audit anchor`), and the anchor file of every
checkpoint that `flask audit verify --anchor` checks the trail against, kept outside the
database."""

import json
from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from backend.audit import chain
from backend.clock import rfc3339, utcnow
from backend.models import Checkpoint


def anchor(connection: sa.Connection, key: bytes) -> dict | None:
    """Sign the chain's head now; return the checkpoint (None on an empty trail)."""
    head = chain.lock_head(connection)
    if not head.last_id:
        return None
    checkpoint = chain.sign(key, head.last_id, head.last_hash, utcnow(), "anchor")
    connection.execute(sa.insert(Checkpoint), checkpoint)
    return checkpoint


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
