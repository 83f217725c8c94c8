"""RFC 9162 proofs over the stored tree (merkle.py): one query of a few dozen stored subtree
hashes each, whatever the tree's size, and no row read.

A proof's positions depend only on its sizes, so they are known before any query: the stored
hashes travel as one column (`with_nodes`) of the statement that reads what the proof must
check first (the tree's size, the row's visibility, the latest signed head), one round trip
for a proof.
"""

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from backend.audit import merkle
from backend.models import AuditChain, TreeNode

# Positions are stored as 64-bit numbers; a larger one (a tree size of 2**62 and more) names
# no stored hash, and must not reach the database as a number.
MAX_POSITION = 2**63 - 1


class BadSize(ValueError):
    """A tree size no proof can be given for; `field` names the parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _nodes_column(dialect: str) -> sa.Label:
    """The stored hashes at the positions `:positions` as one JSON object {position: hash}
    (NULL for none). One array parameter on PostgreSQL: the same statement whatever the
    count, so the driver prepares it once a connection (IN is a new statement, planned again,
    per count)."""
    if dialect == "postgresql":
        positions = sa.bindparam("positions", type_=ARRAY(sa.BigInteger))
        pairs = sa.func.json_object_agg(TreeNode.position, TreeNode.hash, type_=sa.JSON)
        query = sa.select(pairs).where(TreeNode.position == sa.any_(positions))
    else:
        pairs = sa.func.json_group_object(TreeNode.position, TreeNode.hash, type_=sa.JSON)
        query = sa.select(pairs).where(
            TreeNode.position.in_(sa.bindparam("positions", expanding=True))
        )
    return query.scalar_subquery().label("nodes")


DIALECTS = ("postgresql", "sqlite")


def with_nodes(query: sa.Select) -> dict[str, sa.Select]:
    """`query` with the stored hashes at `:positions` beside it as the column `nodes`
    (`stored` reads it), made once per dialect: made per call, a statement costs more than
    its answer (0.3 to 0.6 ms each on a 2-core machine)."""
    return {dialect: query.add_columns(_nodes_column(dialect)) for dialect in DIALECTS}


def stored(nodes: dict[str, str] | None) -> dict[int, bytes]:
    """The `nodes` column as {position: hash}."""
    return {int(position): bytes.fromhex(value) for position, value in (nodes or {}).items()}


# The tree's size (the chain's head: ids are gapless from 1) and the stored hashes asked for.
SIZE_AND_NODES = with_nodes(sa.select(AuditChain.last_id).where(AuditChain.id == 1))


def size_and_nodes(connection: sa.Connection, positions: list[int]) -> tuple[int, dict]:
    """How many leaves the tree has now, and the stored hashes at `positions`."""
    query = SIZE_AND_NODES[connection.dialect.name]
    row = connection.execute(query, {"positions": positions}).first()
    return (row.last_id or 0, stored(row.nodes)) if row else (0, {})


def _inclusion_path(leaf_index: int, size: int) -> Callable:
    return lambda node: merkle.inclusion_path(node, leaf_index, size)


def inclusion_positions(leaf_index: int, size: int) -> list[int]:
    """The positions an inclusion proof reads: the leaf's and its path's."""
    if not leaf_index < size:
        return []
    needed = merkle.positions_needed(_inclusion_path(leaf_index, size))
    return [p for p in [merkle.position(0, leaf_index), *needed] if p <= MAX_POSITION]


def inclusion(leaf_index: int, size: int, tree_size: int, nodes: dict[int, bytes]) -> dict:
    """The inclusion proof of leaf `leaf_index` in the tree of `size` leaves, as the API
    answers it, from the stored hashes `nodes` (read at `inclusion_positions`) of a tree of
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
    tree_size, nodes = size_and_nodes(connection, inclusion_positions(leaf_index, size))
    return inclusion(leaf_index, size, tree_size, nodes)


def consistency(connection: sa.Connection, first: int, second: int) -> dict:
    """The consistency proof between the trees of `first` and `second` leaves: the tree's
    size and the hashes in one query."""

    def path(node):
        return merkle.consistency_path(node, first, second)

    positions = merkle.positions_needed(path) if first <= second else []
    size, nodes = size_and_nodes(connection, [p for p in positions if p <= MAX_POSITION])
    if second > size:
        raise BadSize("second", f"must be at most the tree's size ({size})")
    if first > second:
        raise BadSize("first", "must be at most `second`")
    return {"first": first, "second": second, "consistency_path": merkle.proof_from(path, nodes)}
