"""What `verify` checks of the Merkle tree while it walks the rows: every signed tree head is
signed by a listed key (or the service's own), no two disagree about one size, and the rows
hash to each head's root; at the end, the chain's head holds the tree the rows make.

Rows purged before the walk's first row are stood in for by the tree's stored hashes of them
(a purge keeps those), as a purge checkpoint stands in for their chain.
"""

import base64

import sqlalchemy as sa

from backend.audit import merkle, notes
from backend.models import SigningKey, TreeHead, TreeNode


class TreeBroken(Exception):
    """The first thing wrong with the tree: the row to name and why."""

    def __init__(self, row: int, problem: str):
        super().__init__(problem)
        self.row = row
        self.problem = problem


class TreeCheck:
    """Grows the tree row by row and checks it against the signed heads. What it finds is
    reported by `finish`, after the chain's own checks, which name a tampering more precisely
    when they catch it too."""

    def __init__(self, roots: dict[int, str], size: int, frontier: list[bytes]):
        self.roots, self.size, self.frontier = roots, size, frontier
        self.broken: TreeBroken | None = None

    @classmethod
    def from_database(cls, connection: sa.Connection, first_id: int | None, own_key=None):
        """A check of the trail from `first_id` on: the stored heads, each signature checked,
        and the stored tree of the rows before it (purged ones)."""
        size = (first_id or 1) - 1
        return cls(_signed_roots(connection, own_key), size, stored_frontier(connection, size))

    def add(self, row_id: int, row_hash: str) -> None:
        """Add the row's leaf; check the root when a head was signed at this size."""
        self.size, _ = merkle.append(self.frontier, self.size, [merkle.leaf_hash(row_hash)])
        signed = self.roots.get(self.size)
        if signed is not None and not self.broken and signed != merkle.root(self.frontier):
            self.broken = TreeBroken(
                row_id,
                f"the rows up to here do not hash to the signed tree head of size {self.size}:"
                " the trail was rewritten",
            )

    def finish(self, stored_frontier: str) -> None:
        """The first root that did not match; then the chain's head must hold the frontier
        the rows make, or appends go astray."""
        if self.broken:
            raise self.broken
        beyond = [size for size in self.roots if size > self.size]
        if beyond:
            raise TreeBroken(
                self.size + 1,
                f"missing: a signed tree head covers {max(beyond)} rows, the table ends at"
                f" row {self.size}",
            )
        if self.size and merkle.pack(self.frontier) != stored_frontier:
            raise TreeBroken(
                self.size, "the Merkle tree kept in the chain's head does not match the rows"
            )


def _signed_roots(connection: sa.Connection, own_key) -> dict[int, str]:
    """{tree size: root} of every stored head, each signature checked."""
    keys = [
        notes.VerifierKey(name, base64.b64decode(public))
        for name, public in connection.execute(sa.select(SigningKey.name, SigningKey.public_key))
    ]
    if own_key is not None:
        keys.append(own_key)
    roots: dict[int, str] = {}
    query = sa.select(TreeHead.tree_size, TreeHead.checkpoint).order_by(TreeHead.id)
    for size, note in connection.execute(query):
        try:
            checkpoint = notes.open_checkpoint(note, keys)
        except notes.BadNote as error:
            problem = f"the signed tree head of size {size} is not valid: {error}"
            raise TreeBroken(size, problem) from None
        if checkpoint.tree_size != size:
            raise TreeBroken(size, f"the signed tree head stored at size {size} is of another")
        if roots.setdefault(size, checkpoint.root_hash) != checkpoint.root_hash:
            raise TreeBroken(size, f"split view: two signed tree heads of size {size} disagree")
    return roots


def stored_frontier(connection: sa.Connection, size: int) -> list[bytes]:
    """The frontier of the tree's first `size` leaves, from its stored hashes."""
    parts = merkle.perfect_subtrees(0, size)
    positions = [merkle.position(level, index) for level, index in parts]
    stored = dict(
        connection.execute(
            sa.select(TreeNode.position, TreeNode.hash).where(TreeNode.position.in_(positions))
        ).all()
    )
    missing = [at for at in positions if at not in stored]
    if missing:
        raise TreeBroken(size, "the Merkle tree's hashes of the purged rows are missing")
    hashes = [hash_of(stored[at]) for at in positions]
    if None in hashes:
        raise TreeBroken(size, "the Merkle tree's hashes of the purged rows are not all hashes")
    return hashes


def hash_of(text) -> bytes | None:
    """The hash whose hex a stored `hash` is; None when it is not one (SQLite keeps any text
    in a String(64) column)."""
    if not isinstance(text, str) or len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None
