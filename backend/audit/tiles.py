"""The tree's tiles (merkle.py): stored by the writer as they complete, in the transaction of
the rows that complete them, and built for a tree stored before (migration 0014).

A tile is a copy of 62 stored subtrees (`audit_tree_node`), made only from them: one whose
members are not all stored is not made, and a proof then reads the members themselves.
"""

import sqlalchemy as sa

from backend.audit import merkle

# The tables as this module uses them (migration 0014 does too: not the app's models, which
# may change after it).
_NODE = sa.table("audit_tree_node", sa.column("position", sa.BigInteger), sa.column("hash"))
_TILE = sa.table("audit_tree_tile", sa.column("position", sa.BigInteger), sa.column("hashes"))
MEMBERS = 2 * ((1 << merkle.TILE_HEIGHT) - 1)

# The writer's statement on PostgreSQL, one a tile completed, in the batch's own message
# (chain.append_and_commit), after the INSERT of its nodes.
PG_INSERT = (
    "INSERT INTO audit_tree_tile (position, hashes)"
    " SELECT %s, string_agg(decode(hash, 'hex'), ''::bytea ORDER BY position)"
    f" FROM audit_tree_node WHERE position = ANY(%s) HAVING count(*) = {MEMBERS}"
)


def insert(connection: sa.Connection, roots: list[int]) -> None:
    """Store the tiles of `roots` from their members' stored hashes (any database)."""
    for root in roots:
        members = merkle.tile_members(root)
        query = sa.select(_NODE.c.position, _NODE.c.hash).where(_NODE.c.position.in_(members))
        found = dict(connection.execute(query).all())
        if len(found) == MEMBERS:
            connection.execute(sa.insert(_TILE).values(position=root, hashes=_joined(found)))


def _joined(members: dict[int, str]) -> bytes:
    """A tile's bytes from its members' stored hashes ({position: hex}), in position order."""
    return b"".join(bytes.fromhex(members[at]) for at in sorted(members))


def build(connection: sa.Connection, size: int) -> int:
    """Store every tile of the tree of `size` leaves that is complete and not stored yet, from
    the stored subtrees; the number stored. A pass over the stored subtrees a tile level: on
    PostgreSQL in the server, one statement a level."""
    stored = 0
    top = merkle.TILE_HEIGHT
    while 1 << top <= size:
        bounds = {
            "end": (size >> top) << (top + 1),  # the complete tiles' positions are below
            "step": 1 << (top - merkle.TILE_HEIGHT),  # members: (position + 1) % step = 0
            "shift": top + 1,  # a member's tile: position >> shift
            "root": (1 << top) - 1,  # the tile's root: its index << shift, + root
        }
        if connection.dialect.name == "postgresql":
            stored += connection.execute(_PG_BUILD, bounds).rowcount
        else:
            stored += _build_level(connection, top, bounds)
        top += merkle.TILE_HEIGHT
    return stored


_PG_BUILD = sa.text(
    "INSERT INTO audit_tree_tile (position, hashes)"
    " SELECT ((position >> :shift) << :shift) + :root,"
    "        string_agg(decode(hash, 'hex'), ''::bytea ORDER BY position)"
    " FROM audit_tree_node"
    " WHERE position < :end AND (position + 1) % :step = 0 AND position & :root <> :root"
    " GROUP BY position >> :shift"
    f" HAVING count(*) = {MEMBERS}"
    " ON CONFLICT (position) DO NOTHING"
)


def _build_level(connection: sa.Connection, top: int, bounds: dict) -> int:
    """`build`'s pass for the tiles whose roots are at level `top`, in Python."""
    have = set(connection.scalars(sa.select(_TILE.c.position)))
    query = (
        sa.select(_NODE.c.position, _NODE.c.hash)
        .where(_NODE.c.position < bounds["end"], (_NODE.c.position + 1) % bounds["step"] == 0)
        .order_by(_NODE.c.position)
    )
    tiles: dict[int, dict[int, str]] = {}
    for at, node in connection.execute(query):
        if merkle.level_of(at) < top:
            root = ((at >> bounds["shift"]) << bounds["shift"]) + bounds["root"]
            tiles.setdefault(root, {})[at] = node
    made = [
        {"position": root, "hashes": _joined(members)}
        for root, members in tiles.items()
        if len(members) == MEMBERS and root not in have
    ]
    if made:
        connection.execute(sa.insert(_TILE), made)
    return len(made)
