"""`flask audit verify --tree`: the Merkle tree's stored hashes and tiles, which proofs are made
of (merkle.py, tiles.py), checked against the tree the rows make.

`verify` proves the rows and that they hash to every signed head and to the chain's head's
frontier; of `audit_tree_node` it reads only the frontier it starts from (after a purge, and
at each segment's start), and `audit_tree_tile` not at all, so a stored hash changed after it
was written shows only as proofs that fail their clients' checks. This pass reads them all,
a perfect subtree of up to 2**PIECE leaves at a time (its stored hashes in one query, in the
in-order layout), and:

- recomputes every stored hash above the leaves from the stored leaves, and compares;
- compares every stored tile with the hashes it copies;
- compares the tree's frontier, made from the stored leaves, with the frontier the rows made
  (`TreeCheck`): equal, the stored leaves are the rows' leaves, and those of purged rows the
  ones the frontier the rows' check started from was made of (a different leaf would need a
  SHA-256 collision); so every stored hash is the one the trail makes.

The first finding is a TreeBroken naming rows: in the first piece that has one, a hash
missing or stored as something else than a hash, else the lowest wrong hash (a changed leaf
is named by the hash above it). About one SHA-256 a leaf in Python, and every stored hash
read once; with the pieces shared among verify's processes (segments.worth_it), a 10M-row
trail took 1.3-1.4 times as long to verify with it, 1.5-1.6 times in one process
(docs/audit-trail.md).
"""

from collections.abc import Callable
from functools import cache

import sqlalchemy as sa
from psycopg import sql

from backend.audit import merkle, segments
from backend.audit.tree_check import TreeBroken, hash_of
from backend.models import TreeNode, TreeTile

# The height of the perfect subtrees read at once: 8,192 leaves, 16,383 stored hashes.
PIECE = 13
# Positions asked for in one IN list (SQLite takes up to 32,766 parameters a statement).
BATCH = 10_000


def check(
    connection: sa.Connection,
    size: int,
    frontier: list[bytes],
    progress: Callable[[int], None],
    workers: int = 1,
) -> None:
    """Check the stored tree of `size` leaves against `frontier`, the rows' (TreeBroken: the
    first thing wrong); `progress(leaves)` after each piece. Where verify walks the rows in
    segments (segments.worth_it), `workers` processes check the pieces, in the snapshot of
    `connection`."""
    whole = size >> PIECE << PIECE
    pieces = [(PIECE, index) for index in range(size >> PIECE)]
    pieces += merkle.perfect_subtrees(whole, size)
    groups = min(workers, len(pieces)) if segments.worth_it(connection, workers, size) else 1
    # The hashes the pieces computed that the tree above them is made of: those at levels from
    # the tile height's multiple at or below PIECE (the lowest that a tile rooted above the
    # pieces holds), and each piece's root. {position: hash}
    kept = PIECE // merkle.TILE_HEIGHT * merkle.TILE_HEIGHT
    known: dict[int, bytes] = {}
    if groups > 1:
        url, snapshot = segments.shared_snapshot(connection)
        step = -(-len(pieces) // groups)
        jobs = [
            (url, snapshot, pieces[first : first + step], size, kept)
            for first in range(0, len(pieces), step)
        ]
        for found in segments.in_processes(_check_pieces, jobs, progress):
            if "broken" in found:  # the first group's finding, as one process would name it
                raise TreeBroken(*found["broken"])
            known.update(found["known"])
    else:
        _check_each(connection, pieces, size, kept, known, progress)
    _check_above(connection, size, known)
    for part, (level, index) in enumerate(merkle.perfect_subtrees(0, size)):
        if known[merkle.position(level, index)] != frontier[part]:
            raise TreeBroken(
                _first_row(level, index),
                f"the tree's stored hashes of {_rows(level, index, size)} do not match the"
                " rows: proofs of them fail their check",
            )


def _check_each(connection, pieces: list, size: int, kept: int, known: dict, progress) -> None:
    for level, index in pieces:
        _check_piece(connection, level, index, size, kept, known)
        progress(1 << level)


def _check_pieces(job: tuple) -> dict:
    """In a process of its own: _check_each over some of the pieces, in the shared snapshot;
    {"known": the hashes computed} or {"broken": (row, problem)}."""
    url, snapshot, pieces, size, kept = job
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    known: dict[int, bytes] = {}
    try:
        reading = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with engine.connect().execution_options(**reading) as connection:
            joined = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
            connection.exec_driver_sql(joined.as_string(connection.connection.driver_connection))
            _check_each(connection, pieces, size, kept, known, segments.count)
    except TreeBroken as broken:
        return {"broken": (broken.row, broken.problem)}
    finally:
        engine.dispose()
    return {"known": known}


def _check_piece(connection, level: int, index: int, size: int, kept: int, known: dict) -> None:
    """The stored hashes and tiles of the perfect subtree (level, index)."""
    low = index << (level + 1)
    high = low + (2 << level) - 2  # its in-order positions, its root in the middle
    stored = _stored_range(connection, low, high)
    if stored is None:  # a hash missing, or stored as something else than one
        raise _located(connection, low, high, size)
    leaves = b"".join([stored[at : at + 32] for at in range(0, len(stored), 64)])
    levels = merkle.perfect_levels(leaves)
    expected = b"".join([levels[down][32 * k : 32 * k + 32] for down, k in _in_order(level)])
    if expected != stored:  # the lowest hash that differs: a changed leaf, the one above it
        differs = [
            low + i // 32
            for i in range(0, len(stored), 32)
            if stored[i : i + 32] != expected[i : i + 32]
        ]
        raise _wrong_hash(min(differs, key=lambda at: (merkle.level_of(at), at)), size, DIFFERS)
    query = sa.select(TreeTile.position, TreeTile.hashes).where(
        TreeTile.position.between(low, high)
    )
    for root, tile in connection.execute(query):
        if merkle.is_tile_root(root):  # a row elsewhere is no tile: no proof reads it
            members = [(at - low) * 32 for at in merkle.tile_members(root)]
            _compare_tile(root, tile, b"".join([expected[i : i + 32] for i in members]), size)
    for down in range(kept, level + 1):
        first = index << (level - down)
        for k in range(len(levels[down]) // 32):
            known[merkle.position(down, first + k)] = levels[down][32 * k : 32 * k + 32]
    known[merkle.position(level, index)] = levels[level]


def _check_above(connection: sa.Connection, size: int, known: dict) -> None:
    """The stored hashes above the pieces (each of 2**PIECE leaves or more), and the tiles
    whose roots lie above the pieces (their lower hashes computed in the pieces: `kept`)."""
    computed = {}
    for level in range(PIECE + 1, size.bit_length()):
        for index in range(size >> level):
            node = merkle.node_hash(
                known[merkle.position(level - 1, 2 * index)],
                known[merkle.position(level - 1, 2 * index + 1)],
            )
            known[merkle.position(level, index)] = computed[merkle.position(level, index)] = node
    stored = _stored_at(connection, list(computed))
    for at, node in computed.items():
        if at not in stored:
            raise _wrong_hash(at, size, MISSING)
        if stored[at] != node:
            raise _wrong_hash(at, size, DIFFERS if stored[at] else NOT_A_HASH)
    roots = [
        merkle.position(top, index)
        for top in range(PIECE + 1, size.bit_length())
        if top % merkle.TILE_HEIGHT == 0
        for index in range(size >> top)
    ]
    for first in range(0, len(roots), BATCH):
        where = TreeTile.position.in_(roots[first : first + BATCH])
        tiles = connection.execute(sa.select(TreeTile.position, TreeTile.hashes).where(where))
        for root, tile in tiles:
            members = b"".join([known[at] for at in merkle.tile_members(root)])
            _compare_tile(root, tile, members, size)


DIFFERS = "is not the hash of the hashes below it: proofs through it fail their check"
MISSING = "is missing: proofs through it fail"
NOT_A_HASH = "is not a SHA-256 hash: proofs through it fail"


def _wrong_hash(at: int, size: int, wrong: str) -> TreeBroken:
    """What is wrong with the stored hash at position `at`, naming the rows under it."""
    level, index = _subtree(at)
    return TreeBroken(
        _first_row(level, index),
        f"the tree's stored hash of {_rows(level, index, size)} (level {level}) {wrong}",
    )


def _compare_tile(root: int, tile, expected: bytes, size: int) -> None:
    """`tile` as stored (bytes, unless SQLite was given something else) against `expected`."""
    if not isinstance(tile, bytes | memoryview) or bytes(tile) != expected:
        where = _subtree(root)
        raise TreeBroken(
            _first_row(*where),
            f"the stored tile of {_rows(*where, size)} differs from the tree's hashes it"
            " copies: proofs through it fail their check",
        )


def _stored_range(connection: sa.Connection, low: int, high: int) -> bytes | None:
    """The stored hashes at positions low..high, in order, as one string of 32-byte hashes;
    None unless each is there and is a SHA-256 hash's hex."""
    if connection.dialect.name == "postgresql":  # one string from the server, not 16,383 rows
        text = connection.scalar(
            sa.text(
                "SELECT string_agg(hash, '' ORDER BY position) FROM audit_tree_node"
                " WHERE position BETWEEN :low AND :high"
            ),
            {"low": low, "high": high},
        )
    else:  # SQLite keeps any text in a String(64) column (PostgreSQL's varchar(64) does not)
        query = (
            sa.select(TreeNode.hash)
            .where(TreeNode.position.between(low, high))
            .order_by(TreeNode.position)
        )
        hashes = list(connection.scalars(query))
        if not all(isinstance(one, str) and len(one) == 64 for one in hashes):
            return None
        text = "".join(hashes)
    try:
        stored = bytes.fromhex(text or "")
    except ValueError:
        return None
    return stored if len(stored) == (high - low + 1) * 32 else None


def _stored_at(connection: sa.Connection, positions: list[int]) -> dict[int, bytes | None]:
    """{position: hash} of the stored hashes at `positions` that are there (None: not a hash)."""
    stored = {}
    for first in range(0, len(positions), BATCH):
        where = TreeNode.position.in_(positions[first : first + BATCH])
        query = sa.select(TreeNode.position, TreeNode.hash).where(where)
        stored.update({at: hash_of(text) for at, text in connection.execute(query)})
    return stored


def _located(connection: sa.Connection, low: int, high: int, size: int) -> TreeBroken:
    """The lowest stored hash in low..high that is missing or is not a hash."""
    query = sa.select(TreeNode.position, TreeNode.hash).where(TreeNode.position.between(low, high))
    stored = {at: hash_of(text) for at, text in connection.execute(query)}
    wrong = [at for at in range(low, high + 1) if stored.get(at) is None]
    at = min(wrong, key=lambda at: (merkle.level_of(at), at))
    return _wrong_hash(at, size, MISSING if at not in stored else NOT_A_HASH)


@cache
def _in_order(height: int) -> list[tuple[int, int]]:
    """(level, index within its level) of each position of a perfect subtree of `height`, in
    the in-order layout."""
    return [_subtree(at) for at in range((2 << height) - 1)]


def _subtree(at: int) -> tuple[int, int]:
    """(level, index) of the perfect subtree at position `at`."""
    level = merkle.level_of(at)
    return level, at >> (level + 1)


def _first_row(level: int, index: int) -> int:
    return (index << level) + 1


def _rows(level: int, index: int, size: int) -> str:
    first, last = _first_row(level, index), min((index + 1) << level, size)
    return f"row {first}" if first == last else f"rows {first}-{last}"
