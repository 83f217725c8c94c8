"""The hash chain that makes the trail tamper-evident.

Each row stores `hash = SHA-256(canonical(row) || prev_hash)`, where `prev_hash` is the hash
of the row before it, and `canonical(row)` is the compact JSON array of the fields its chain
version covers (`chain_version`: 1 for rows written before migration 0008, 2 since, which adds
the structured record's fields, `details` with its keys sorted). A version never changes what
it covers, so every row verifies under its own version for ever.

Rows are appended under one lock (the single row of `audit_chain`), and
their ids are given out under that lock too: ids are gapless and committed in order, so a
missing id is a deleted row, and a reader paging by id never skips a row committed late.

A chain alone can be recomputed by anyone who can write the table, so every so many rows
the writer also stores a checkpoint: the head's id and hash, signed
with HMAC-SHA-256 under AUDIT_SIGNING_KEY, which the database never sees.
(AUDIT_CHECKPOINT_EVERY rows, default 1000.)
"""

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from datetime import datetime

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row

from backend.audit.events import AuditEvent
from backend.clock import rfc3339
from backend.models import AUDIT_FIELDS, CHAIN_VERSION, AuditChain, Checkpoint, Log

GENESIS = "0" * 64
# The fields a row's hash covers under each chain version, in this order (models.AUDIT_FIELDS,
# `hashed` and `since`).
HASHED_FIELDS_OF = {
    version: tuple(spec.name for spec in AUDIT_FIELDS if spec.hashed and spec.since <= version)
    for version in range(1, CHAIN_VERSION + 1)
}
HASHED_FIELDS = HASHED_FIELDS_OF[CHAIN_VERSION]


def row_hash(row: dict, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the hashed fields of the row's chain version (1 when
    the row names none), then the previous hash. `details` is canonical with sorted keys."""
    values = []
    for name in HASHED_FIELDS_OF[row.get("chain_version") or 1]:
        value = row[name]
        if isinstance(value, datetime):
            value = rfc3339(value)
        elif name == "event_id" and value is not None:
            value = str(value)
        elif name == "details" and isinstance(value, str):  # as a CSV cell or SQLite's text
            value = json.loads(value)
        values.append(value)
    canonical = json.dumps(values, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode() + prev_hash.encode()).hexdigest()


def checkpoint_mac(key: bytes, log_id: int, log_hash: str, reason: str) -> str:
    """HMAC-SHA-256 of a chain position and why it was signed: proves who wrote it without the
    key being in the database. The reason is covered, so a periodic checkpoint cannot be passed
    off as a purge's (which vouches that the rows before it were removed on purpose)."""
    message = f"{log_id}:{log_hash}:{reason}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def append(
    connection: sa.Connection,
    events: Sequence[AuditEvent],
    key: bytes,
    checkpoint_every: int = 1000,
) -> list[int]:
    """Append `events` to the chain inside the caller's transaction.

    Locks the chain's head row for the rest of the transaction, so concurrent writers (other
    threads, workers or machines) queue here and the chain stays linear. Returns the new ids.
    """
    rows, checkpoints, head = link(lock_head(connection)._asdict(), events, key, checkpoint_every)
    connection.execute(sa.insert(Log), rows)
    if checkpoints:
        connection.execute(sa.insert(Checkpoint), checkpoints)
    connection.execute(sa.update(AuditChain).where(AuditChain.id == 1).values(**head))
    return [row["id"] for row in rows]


def append_and_commit(
    connection: psycopg.Connection,
    events: Sequence[AuditEvent],
    key: bytes,
    checkpoint_every: int = 1000,
) -> list[int]:
    """`append` and COMMIT on a psycopg (PostgreSQL) connection in autocommit mode
    (db_types.autocommit_connection), in two round trips and two
    messages: `BEGIN; SELECT ... FOR UPDATE` of the head, then the INSERTs, the head's UPDATE
    and `COMMIT` as one string (bound on the client: the simple query protocol runs several
    statements in one message). The chain's lock is held for one round trip and the commit's
    flush, where `append` through SQLAlchemy takes six round trips, and psycopg's pipeline mode
    one write and one poll per statement. If a statement fails, the server skips the rest of
    the string, COMMIT included; the caller's connection manager rolls the transaction back.
    """
    cursor = psycopg.ClientCursor(connection, row_factory=dict_row)
    cursor.execute(_PG_BEGIN_LOCK_HEAD)
    cursor.nextset()
    rows, checkpoints, head = link(cursor.fetchone(), events, key, checkpoint_every)
    # The rows travel as one JSON array: one literal to quote, however many rows and columns.
    statements, params = [_PG_INSERT_LOG], [json.dumps(rows, default=str)]
    if checkpoints:
        statements.append(_PG_INSERT_CHECKPOINT)
        params.append(json.dumps(checkpoints, default=str))
    cursor.execute(
        ";".join([*statements, _PG_UPDATE_HEAD, "COMMIT"]),
        [*params, *(head[name] for name in HEAD_COLUMNS)],
    )
    return [row["id"] for row in rows]


def link(
    head: dict, events: Sequence[AuditEvent], key: bytes, checkpoint_every: int
) -> tuple[list[dict], list[dict], dict]:
    """The rows of `events` chained on to `head`, the checkpoints they call for, the new head."""
    last_id, prev_hash = head["last_id"], head["last_hash"]
    last_created_at, since_checkpoint = head["last_created_at"], head["since_checkpoint"]
    rows, checkpoints = [], []
    for event in events:
        row = event.as_row()
        last_id += 1
        row["id"] = last_id
        row["chain_version"] = CHAIN_VERSION
        # Time never runs backwards along the chain, so (created_at, id) order is id order.
        if last_created_at is not None and row["created_at"] < last_created_at:
            row["created_at"] = last_created_at
        row["prev_hash"] = prev_hash
        row["hash"] = prev_hash = row_hash(row, prev_hash)
        last_created_at = row["created_at"]
        rows.append(row)
        since_checkpoint += 1
        if since_checkpoint >= checkpoint_every:
            checkpoints.append(sign(key, row["id"], row["hash"], row["created_at"], "periodic"))
            since_checkpoint = 0
    return (
        rows,
        checkpoints,
        {
            "last_id": last_id,
            "last_hash": prev_hash,
            "last_created_at": last_created_at,
            "since_checkpoint": since_checkpoint,
        },
    )


def lock_head(connection: sa.Connection):
    """The chain's head row, locked until the transaction ends (appends queue behind it)."""
    return connection.execute(
        sa.select(
            AuditChain.last_id,
            AuditChain.last_hash,
            AuditChain.last_created_at,
            AuditChain.since_checkpoint,
        )
        .where(AuditChain.id == 1)
        .with_for_update()
    ).one()


def sign(key: bytes, log_id: int, log_hash: str, created_at: datetime, reason: str) -> dict:
    """A checkpoint row vouching that row `log_id` has hash `log_hash`."""
    return {
        "log_id": log_id,
        "log_hash": log_hash,
        "created_at": created_at,
        "reason": reason,
        "mac": checkpoint_mac(key, log_id, log_hash, reason),
    }


def existing_event_ids(connection: sa.Connection, event_ids: Iterable) -> set:
    """Which of these events are already in the trail (a replay must not write them twice)."""
    event_ids = list(event_ids)
    if not event_ids:
        return set()
    return set(connection.scalars(sa.select(Log.event_id).where(Log.event_id.in_(event_ids))))


# The statements of `append_and_commit`, in psycopg's parameter style.
HEAD_COLUMNS = ("last_id", "last_hash", "last_created_at", "since_checkpoint")
LOG_COLUMNS = tuple(spec.name for spec in AUDIT_FIELDS)
CHECKPOINT_COLUMNS = ("log_id", "log_hash", "created_at", "reason", "mac")
_PG_BEGIN_LOCK_HEAD = (
    f"BEGIN; SELECT {', '.join(HEAD_COLUMNS)} FROM audit_chain WHERE id = 1 FOR UPDATE"
)
_PG_UPDATE_HEAD = (
    "UPDATE audit_chain SET " + ", ".join(f"{name} = %s" for name in HEAD_COLUMNS) + " WHERE id = 1"
)


def _pg_insert_json(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(f'"{name}"' for name in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names}"
        f" FROM json_populate_recordset(NULL::{table}, %s)"
    )


_PG_INSERT_LOG = _pg_insert_json("audit_log", LOG_COLUMNS)
_PG_INSERT_CHECKPOINT = _pg_insert_json("audit_checkpoint", CHECKPOINT_COLUMNS)
