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

The rows are also the leaves of a Merkle tree (merkle.py), grown in the same transaction;
with each periodic checkpoint, and every few seconds while rows come, the head of that tree
is signed with an Ed25519 key (signing.py) whose public half anyone may hold.
"""

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row

from backend.audit import merkle, tiles
from backend.audit.events import AuditEvent
from backend.clock import rfc3339
from backend.models import (
    AUDIT_FIELDS,
    CHAIN_VERSION,
    AuditChain,
    Checkpoint,
    Log,
    TreeHead,
    TreeNode,
)

if TYPE_CHECKING:
    from backend.audit.signing import TreeSigner

GENESIS = "0" * 64
# The fields a row's hash covers under each chain version, in this order (models.AUDIT_FIELDS,
# `hashed` and `since`).
HASHED_FIELDS_OF = {
    version: tuple(spec.name for spec in AUDIT_FIELDS if spec.hashed and spec.since <= version)
    for version in range(1, CHAIN_VERSION + 1)
}
HASHED_FIELDS = HASHED_FIELDS_OF[CHAIN_VERSION]


class BrokenHead(Exception):
    """The chain's head cannot be appended to: its Merkle frontier does not fit its size (the
    head was changed by hand). Like a database that refuses every row, an outage: the writer
    spools, and `flask audit verify` names what is wrong."""


# The events that queued for the chain while a batch waited for its lock, taken into the
# batch once the lock is held (`append`, `append_and_commit`; group_commit.py gives them).
More = Callable[[], list[AuditEvent]]


def row_hash(row: dict, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the hashed fields of the row's chain version (1 when
    the row names none), then the previous hash. `details` is canonical with sorted keys."""
    values = _hashed_values(row, HASHED_FIELDS_OF[row.get("chain_version") or 1])
    return _digest(_canonical(values), prev_hash)


# The hashed fields that only the chain's head decides (`link`): the row's id, and its time
# when the writer's clock is behind the head's. They come first, so the canonical JSON of the
# rest is made before the lock (`unlinked`).
LINKED = ("id", "created_at")
assert all(
    fields[: len(LINKED)] == LINKED and len(fields) > len(LINKED)
    for fields in HASHED_FIELDS_OF.values()
)


def _hashed_values(row: dict, names: Iterable[str]) -> list:
    values = []
    for name in names:
        value = row[name]
        if isinstance(value, datetime):
            value = rfc3339(value)
        elif name == "event_id" and value is not None:
            value = str(value)
        # `details` is hashed as it comes: the writer's is always an object, so a JSON text of
        # it (a string holding `{"a": 1}`, where `{"a": 1}` was written) is another value.
        values.append(value)
    return values


def _canonical(values: list) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _digest(canonical: str, prev_hash: str) -> str:
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
    signer: "TreeSigner | None" = None,
    more: More | None = None,
) -> list[int]:
    """Append `events` to the chain inside the caller's transaction, and after them the events
    `more()` gives once the head is locked (those that queued meanwhile: group_commit.py; their
    rows are made under the lock, the only rows that are).

    Locks the chain's head row for the rest of the transaction, so concurrent writers (other
    threads, workers or machines) queue here and the chain stays linear. The Merkle tree's
    new nodes, and the tree heads `signer` signs, go in the same transaction. Returns the new
    ids.
    """
    rows = unlinked(events)  # before the lock: see `link`
    head = lock_head(connection)._asdict()
    rows += unlinked(more()) if more else []
    linked = link(head, rows, key, checkpoint_every, signer)
    connection.execute(sa.insert(Log), linked.rows)
    connection.execute(sa.insert(TreeNode), linked.nodes)
    tiles.insert(connection, linked.tiles)
    for table, values in ((Checkpoint, linked.checkpoints), (TreeHead, linked.heads)):
        if values:
            connection.execute(sa.insert(table), values)
    connection.execute(sa.update(AuditChain).where(AuditChain.id == 1).values(**linked.head))
    return [row["id"] for row in linked.rows]


def append_and_commit(
    connection: psycopg.Connection,
    events: Sequence[AuditEvent],
    key: bytes,
    checkpoint_every: int = 1000,
    signer: "TreeSigner | None" = None,
    more: More | None = None,
) -> list[int]:
    """`append` and COMMIT on a psycopg (PostgreSQL) connection in autocommit mode
    (db_types.autocommit_connection), in two round trips and two messages: `BEGIN; SELECT
    ... FOR UPDATE` of the head, then `SELECT audit_append(...); COMMIT` (bound on the client:
    the simple query protocol runs several statements in one message). audit_append
    (migration 0013) makes the INSERTs and the head's UPDATE with plans PostgreSQL keeps in
    each connection, where a string of statements was parsed and planned each time, the head
    locked meanwhile. The chain's lock is held for one round trip and the commit's flush
    (`append` through SQLAlchemy takes six round trips, psycopg's pipeline mode one write and
    one poll per statement). If the function fails, the server skips the COMMIT; the caller's
    connection manager rolls the transaction back. The tree's new nodes are computed here from
    the frontier the head carries, and travel in the same message; so does, every 32 rows,
    the INSERT of the tile of the tree they complete (tiles.py), made from those nodes.
    """
    rows = unlinked(events)  # before the lock: see `link`
    # The rows travel as one JSON array: one literal to quote, however many rows and columns.
    # Each row's JSON object but for what `link` sets is made before the lock too.
    texts = [_json_without(row, SET_BY_LINK) for row, _ in rows]
    cursor = psycopg.ClientCursor(connection, row_factory=dict_row)
    cursor.execute(_PG_BEGIN_LOCK_HEAD)
    cursor.nextset()
    head = cursor.fetchone()
    if more and (joined := unlinked(more())):
        rows += joined
        texts += [_json_without(row, SET_BY_LINK) for row, _ in joined]
    linked = link(head, rows, key, checkpoint_every, signer)
    objects = (
        f"{text},{_json_of(row, SET_BY_LINK)[1:]}"
        for text, row in zip(texts, linked.rows, strict=True)
    )
    others = (linked.nodes, linked.checkpoints, linked.heads, linked.head)
    # The tiles the batch completed (one every 32 rows), from the nodes audit_append stores.
    statements = ["SELECT audit_append(%s, %s, %s, %s, %s)"]
    statements += [tiles.PG_INSERT] * len(linked.tiles) + ["COMMIT"]
    cursor.execute(
        "; ".join(statements),
        [
            f"[{','.join(objects)}]",
            *(json.dumps(v, default=str) if v else None for v in others),
            *(value for root in linked.tiles for value in (root, merkle.tile_members(root))),
        ],
    )
    return [row["id"] for row in linked.rows]


# The columns of a row that `link` sets (created_at: only when the clock ran behind).
SET_BY_LINK = ("id", "created_at", "prev_hash", "hash")


def _json_of(row: dict, names: Sequence[str]) -> str:
    return json.dumps({name: row[name] for name in names}, default=str)


def _json_without(row: dict, names: Sequence[str]) -> str:
    """The JSON object of `row` but for `names`, without its closing brace."""
    return json.dumps({k: v for k, v in row.items() if k not in names}, default=str)[:-1]


class Unlinked(NamedTuple):
    """A row made before the chain's lock, and `hashed`: the canonical JSON of its hashed
    values after LINKED, which the head does not change (`row_hash`'s, without brackets)."""

    row: dict
    hashed: str


def unlinked(events: Sequence[AuditEvent]) -> list[Unlinked]:
    """The rows of `events`, as far as they can be made without the chain's head."""
    made = []
    for event in events:
        row = event.as_row()
        row["chain_version"] = CHAIN_VERSION
        after_linked = HASHED_FIELDS_OF[CHAIN_VERSION][len(LINKED) :]  # the version's own
        made.append(Unlinked(row, _canonical(_hashed_values(row, after_linked))[1:-1]))
    return made


class Linked(NamedTuple):
    """What appending a batch writes: rows, HMAC checkpoints, tree nodes and heads, the head,
    and the roots of the tree's tiles the batch completes (tiles.py)."""

    rows: list[dict]
    checkpoints: list[dict]
    nodes: list[dict]
    heads: list[dict]
    head: dict
    tiles: list[int]


def link(
    head: dict,
    made: list[Unlinked],
    key: bytes,
    checkpoint_every: int,
    signer: "TreeSigner | None" = None,
) -> Linked:
    """The rows `made` by `unlinked` (given their ids and hashes here, in place) chained on to
    `head` and added to its Merkle tree, the checkpoints and signed tree heads they call for
    (a head with each periodic checkpoint, and one at the batch's end when the last is
    HEAD_EVERY old), the new head.

    It runs while the chain's head is locked, which every writer waits for: the rows are made
    before (their `details` made safe, their strings storable, the canonical JSON of what the
    head does not change), so that only what needs the head (the ids, the hashes, the tree) is
    done under the lock. Each hash is `row_hash`'s (tests/test_integrity.py)."""
    last_id, prev_hash = head["last_id"], head["last_hash"]
    last_created_at, since_checkpoint = head["last_created_at"], head["since_checkpoint"]
    frontier, head_at = merkle.unpack(head["tree_frontier"]), head["tree_head_at"]
    if len(frontier) != last_id.bit_count():  # a tree of n leaves has a subtree per 1 bit of n
        raise BrokenHead(
            f"the chain's head is at row {last_id}, but its Merkle frontier holds"
            f" {len(frontier)} subtrees where a tree of {last_id} leaves has {last_id.bit_count()}"
        )
    rows, checkpoints, nodes, heads, tile_roots = [], [], [], [], []
    for row, hashed in made:
        last_id += 1
        row["id"] = last_id
        # Time never runs backwards along the chain, so (created_at, id) order is id order.
        if last_created_at is not None and row["created_at"] < last_created_at:
            row["created_at"] = last_created_at
        row["prev_hash"] = prev_hash
        canonical = f"{_canonical(_hashed_values(row, LINKED))[:-1]},{hashed}]"
        row["hash"] = prev_hash = _digest(canonical, prev_hash)
        last_created_at = row["created_at"]
        rows.append(row)
        _, completed = merkle.append(frontier, last_id - 1, [merkle.leaf_hash(row["hash"])])
        nodes += [{"position": at, "hash": node.hex()} for at, node in completed]
        tile_roots += [at for at, _ in completed if merkle.is_tile_root(at)]
        since_checkpoint += 1
        if since_checkpoint >= checkpoint_every:
            checkpoints.append(sign(key, row["id"], row["hash"], row["created_at"], "periodic"))
            since_checkpoint = 0
            if signer:
                heads.append(signer.head(last_id, merkle.root(frontier), last_created_at))
    if signer and rows and not heads and _head_due(head_at, last_created_at):
        heads.append(signer.head(last_id, merkle.root(frontier), last_created_at))
    return Linked(
        rows,
        checkpoints,
        nodes,
        heads,
        {
            "last_id": last_id,
            "last_hash": prev_hash,
            "last_created_at": last_created_at,
            "since_checkpoint": since_checkpoint,
            "tree_frontier": merkle.pack(frontier),
            "tree_head_at": heads[-1]["created_at"] if heads else head_at,
        },
        tile_roots,
    )


# Seconds between two signed tree heads while rows are written, at most.
HEAD_EVERY = timedelta(seconds=5)


def _head_due(head_at: datetime | None, now: datetime) -> bool:
    return head_at is None or now - head_at >= HEAD_EVERY


def lock_head(connection: sa.Connection):
    """The chain's head row, locked until the transaction ends (appends queue behind it)."""
    return connection.execute(
        sa.select(
            AuditChain.last_id,
            AuditChain.last_hash,
            AuditChain.last_created_at,
            AuditChain.since_checkpoint,
            AuditChain.tree_frontier,
            AuditChain.tree_head_at,
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


# The head `append_and_commit` locks; audit_append (migration 0013) writes it back.
HEAD_COLUMNS = (
    "last_id",
    "last_hash",
    "last_created_at",
    "since_checkpoint",
    "tree_frontier",
    "tree_head_at",
)
_PG_BEGIN_LOCK_HEAD = (
    f"BEGIN; SELECT {', '.join(HEAD_COLUMNS)} FROM audit_chain WHERE id = 1 FOR UPDATE"
)
