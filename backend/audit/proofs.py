"""RFC 9162 proofs over the stored tree (merkle.py): one query of a few dozen stored subtree
hashes each, whatever the tree's size, and no row read.

A proof's positions depend only on its sizes, so they are known before any query, and so are
the tiles that hold most of them (`Reads`): the stored hashes travel as two columns
(`with_nodes`) of the statement that reads what the proof must check first (the tree's size,
the row's visibility, the latest signed head), one round trip for a proof. From a tree of
10M rows, a proof at its size reads 5 tiles and about 14 nodes at the tree's right edge (the
newest, so the likeliest cached) where it read about 36 nodes, most on a page of their own
(docs/benchmarks.md).
"""

from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from backend.audit import merkle
from backend.models import AuditChain, TreeNode, TreeTile

# Positions are stored as 64-bit numbers; a larger one (a tree size of 2**62 and more) names
# no stored hash, and must not reach the database as a number.
MAX_POSITION = 2**63 - 1


class BadSize(ValueError):
    """A tree size no proof can be given for; `field` names the parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Reads(NamedTuple):
    """What a proof reads: every stored subtree it needs, by position, and where each comes
    from (merkle.plan): the positions in no complete tile, the others' tiles (`tiled`:
    {position: its tile's root}), and those tiles' roots."""

    needed: list[int]
    nodes: list[int]
    tiled: dict[int, int]
    tiles: list[int]

    @classmethod
    def of(cls, needed: list[int], size: int) -> "Reads":
        """The reads of the positions `needed` of a tree of `size` leaves."""
        needed = [at for at in needed if at <= MAX_POSITION]
        nodes, tiled = merkle.plan(needed, size)
        tiled = {at: root for at, root in tiled.items() if root <= MAX_POSITION}
        return cls(needed, nodes, tiled, sorted(set(tiled.values())))

    def params(self) -> dict:
        return {"positions": self.nodes, "tiles": self.tiles}


def _json_column(dialect: str, key: sa.Column, value, name: str) -> sa.Label:
    """The rows of `key`'s table whose key is in the parameter `name` as one JSON object
    {key: value} (NULL for none). One array parameter on PostgreSQL: the same statement
    whatever the count, so the driver prepares it once a connection (IN is a new statement,
    planned again, per count)."""
    if dialect == "postgresql":
        keys = sa.bindparam(name, type_=ARRAY(sa.BigInteger))
        pairs = sa.func.json_object_agg(key, value, type_=sa.JSON)
        query = sa.select(pairs).where(key == sa.any_(keys))
    else:
        pairs = sa.func.json_group_object(key, value, type_=sa.JSON)
        query = sa.select(pairs).where(key.in_(sa.bindparam(name, expanding=True)))
    return query.scalar_subquery().label(name)


def _tile_hex(dialect: str):
    if dialect == "postgresql":
        return sa.func.encode(TreeTile.hashes, "hex")
    return sa.func.hex(TreeTile.hashes)


def _stored_columns(dialect: str) -> list[sa.Label]:
    """The columns `positions` (the stored hashes at `:positions`) and `tiles` (the tiles
    of `:tiles`, in hex)."""
    return [
        _json_column(dialect, TreeNode.position, TreeNode.hash, "positions"),
        _json_column(dialect, TreeTile.position, _tile_hex(dialect), "tiles"),
    ]


DIALECTS = ("postgresql", "sqlite")


def with_nodes(query: sa.Select) -> dict[str, sa.Select]:
    """`query` with the stored hashes of a `Reads` beside it (its `params`) as the columns
    `positions` and `tiles` (`stored` reads them), made once per dialect: made per call, a
    statement costs more than its answer (0.3 to 0.6 ms each on a 2-core machine)."""
    return {dialect: query.add_columns(*_stored_columns(dialect)) for dialect in DIALECTS}


def stored(connection: sa.Connection, reads: Reads, row) -> dict[int, bytes]:
    """The hashes of `reads` that `row` (of a `with_nodes` statement) brought, as {position:
    hash}. A tile that is not stored (tiles.py makes none whose members are not all there)
    costs a second query, of its members one by one."""
    found = {int(at): bytes.fromhex(value) for at, value in (row.positions or {}).items()}
    tiles = {int(root): bytes.fromhex(tile) for root, tile in (row.tiles or {}).items()}
    for at, root in reads.tiled.items():  # only the hashes wanted of each tile
        if root in tiles:
            found[at] = merkle.tile_hash(root, tiles[root], at)
    if missing := [at for at in reads.needed if at not in found]:
        query = sa.select(TreeNode.position, TreeNode.hash).where(TreeNode.position.in_(missing))
        found.update((at, bytes.fromhex(node)) for at, node in connection.execute(query))
    return found


# The tree's size (the chain's head: ids are gapless from 1) and the stored hashes asked for.
SIZE_AND_NODES = with_nodes(sa.select(AuditChain.last_id).where(AuditChain.id == 1))


def size_and_nodes(connection: sa.Connection, reads: Reads) -> tuple[int, dict]:
    """How many leaves the tree has now, and the stored hashes of `reads`."""
    query = SIZE_AND_NODES[connection.dialect.name]
    row = connection.execute(query, reads.params()).first()
    return (row.last_id or 0, stored(connection, reads, row)) if row else (0, {})


def _inclusion_path(leaf_index: int, size: int) -> Callable:
    return lambda node: merkle.inclusion_path(node, leaf_index, size)


def inclusion_reads(leaf_index: int, size: int) -> Reads:
    """What an inclusion proof reads: the leaf's hash and its path's."""
    if not leaf_index < size:
        return Reads([], [], {}, [])
    needed = merkle.positions_needed(_inclusion_path(leaf_index, size))
    return Reads.of([merkle.position(0, leaf_index), *needed], size)


def inclusion(leaf_index: int, size: int, tree_size: int, nodes: dict[int, bytes]) -> dict:
    """The inclusion proof of leaf `leaf_index` in the tree of `size` leaves, as the API
    answers it, from the stored hashes `nodes` (those of `inclusion_reads`) of a tree of
    `tree_size` leaves."""
    if not leaf_index < size <= tree_size:
        raise BadSize(
            "tree_size",
            f"must be more than the row's leaf index ({leaf_index}) and at most the tree's"
            f" size ({tree_size})",
        )
    return {
        "leaf_index": leaf_index,
        "tree_size": size,
        "leaf_hash": nodes[merkle.position(0, leaf_index)].hex(),
        "audit_path": merkle.proof_from(_inclusion_path(leaf_index, size), nodes),
    }


def inclusion_at(connection: sa.Connection, leaf_index: int, size: int) -> dict:
    """`inclusion` with its hashes read here (the caller knows the row may be seen)."""
    tree_size, nodes = size_and_nodes(connection, inclusion_reads(leaf_index, size))
    return inclusion(leaf_index, size, tree_size, nodes)


def consistency(connection: sa.Connection, first: int, second: int) -> dict:
    """The consistency proof between the trees of `first` and `second` leaves: the tree's
    size and the hashes in one query."""

    def path(node):
        return merkle.consistency_path(node, first, second)

    positions = merkle.positions_needed(path) if first <= second else []
    size, nodes = size_and_nodes(connection, Reads.of(positions, second))
    if second > size:
        raise BadSize("second", f"must be at most the tree's size ({size})")
    if first > second:
        raise BadSize("first", "must be at most `second`")
    return {"first": first, "second": second, "consistency_path": merkle.proof_from(path, nodes)}
