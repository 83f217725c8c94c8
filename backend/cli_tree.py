"""`flask audit keys` and `flask audit heads`: what an auditor saves to check the trail
offline (`flask audit verify --file EXPORT --keys KEYS.json`)."""

import json

import click
import sqlalchemy as sa

from backend.audit import signing
from backend.audit.tree_check import stored_frontier
from backend.audit.writer import writer
from backend.cli import audit
from backend.extensions import db
from backend.models import Checkpoint, Log


@audit.command("keys")
def keys_command() -> None:
    """Print the public keys of the signed tree heads as JSON: the auditor's KEYS.json
    (the same document as GET /v1/logs/keys)."""
    writer().list_key()
    with db.engine.connect() as connection:
        click.echo(json.dumps({"keys": signing.listed_keys(connection)}, indent=2))


@audit.command("heads")
def heads_command() -> None:
    """Print every signed tree head, one JSON line each, oldest first: the file to keep
    beside an export (EXPORT.heads) for `flask audit verify --file EXPORT`. After a purge, a
    first line says where the remaining rows start (`_purged_start`)."""
    with db.engine.connect() as connection:
        if start := _purged_start(connection):
            click.echo(json.dumps(start))
        for head in signing.all_heads(connection):
            click.echo(json.dumps(head))


def _purged_start(connection: sa.Connection) -> dict | None:
    """Where an export of the trail starts after a purge: the rows purged (1..N), the hash
    of row N (which row N + 1 must follow) and the tree's stored hashes of rows 1..N (its
    frontier), from which the verifier grows the tree. None before any purge. None of it
    is taken on trust: the first signed head beyond N proves it (offline.py)."""
    first = connection.scalar(sa.select(sa.func.min(Log.id)))
    if not first or first == 1:
        return None
    purged = first - 1
    # The purge's own checkpoint of row N; else what row N + 1 says (`flask audit verify`
    # on the database names a purge without its checkpoint).
    follows = connection.scalar(
        sa.select(Checkpoint.log_hash).where(
            Checkpoint.log_id == purged, Checkpoint.reason == "purge"
        )
    ) or connection.scalar(sa.select(Log.prev_hash).where(Log.id == first))
    frontier = stored_frontier(connection, purged)
    return {"purged": purged, "last_hash": follows, "frontier": [node.hex() for node in frontier]}
