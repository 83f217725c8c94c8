"""The Merkle tree over the trail (RFC 9162, section 2.1): hashing, appending, proofs.

Leaf `i` is row `i + 1`; its data is the 32 bytes of the row's `hash`. Every *perfect* subtree
(2**level leaves, starting at a multiple of 2**level) is stored once it is complete, under its
place in the tree's in-order layout (`position`): the leaves at even positions, the nodes
above them at odd ones. Any subtree D[a:b] the RFC's algorithms ask for splits into at most
2 log2(n) perfect ones, so an inclusion or consistency proof at any size reads a few dozen
stored hashes, never a row. Rows purged later leave their hashes here: proofs still work.

The chain's head keeps the *frontier*: the roots of the perfect subtrees that make up the
whole tree (one per set bit of its size, largest first). Appending a leaf needs only it, and
the root of the tree at any moment is the frontier folded from the right.

Pure Python with no app settings and no database: the offline verifier uses it too.
"""

import hashlib
from collections.abc import Callable, Iterable

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()

NodeGetter = Callable[[int, int], bytes]  # (level, index) -> the perfect subtree's hash


def leaf_hash(row_hash: str) -> bytes:
    """RFC 9162's leaf hash of a row: SHA-256(0x00 || the 32 bytes of its `hash`)."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(row_hash)).digest()


def leaf_hashes(row_hashes: bytes) -> bytes:
    """leaf_hash of many rows at once: their hashes' 32-byte strings joined, and so the result."""
    return _hash_each(_LEAF, row_hashes, 32)


# SHA-256 already fed RFC 9162's prefix, copied for each hash: a copy costs less than a new
# hasher and the bytes joined (verify makes two hashes a row; docs/benchmarks.md).
_LEAF = hashlib.sha256(b"\x00")
_NODE = hashlib.sha256(b"\x01")


def _hash_each(prefixed, data: bytes, width: int) -> bytes:
    """The digests of `prefixed` (a hasher fed its prefix) over each `width` bytes of `data`,
    joined."""
    copy, digests = prefixed.copy, []
    for i in range(0, len(data), width):
        hasher = copy()
        hasher.update(data[i : i + width])
        digests.append(hasher.digest())
    return b"".join(digests)


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162's interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def position(level: int, index: int) -> int:
    """Where the perfect subtree `index` of 2**level leaves sits in the in-order layout."""
    return (index << (level + 1)) + (1 << level) - 1


def append(frontier: list[bytes], size: int, leaves: Iterable[bytes]) -> tuple[int, list]:
    """Append leaf hashes to a tree of `size` leaves whose frontier is `frontier` (changed in
    place); return the new size and the perfect subtrees completed, as (position, hash)."""
    completed = []
    for leaf in leaves:
        node, level, index = leaf, 0, size
        completed.append((position(0, index), node))
        # Each trailing 1 bit of the old size is a perfect subtree that the new leaf completes.
        while index & 1:
            node = node_hash(frontier.pop(), node)
            level, index = level + 1, index >> 1
            completed.append((position(level, index), node))
        frontier.append(node)
        size += 1
    return size, completed


def extend(frontier: list[bytes], size: int, leaves: bytes) -> int:
    """`append` for many leaf hashes at once, given as one string of 32-byte hashes, when only
    the frontier is wanted (verify): each perfect subtree they fill is hashed level by level,
    a list comprehension a level, without `append`'s bookkeeping a leaf. The new size."""
    count, offset = len(leaves) // 32, 0
    for level, index in perfect_subtrees(size, size + count):
        width = 32 << level
        node = perfect_root(leaves[offset : offset + width])
        offset += width
        while index & 1:  # as in `append`: each set bit below is a subtree this one completes
            node = node_hash(frontier.pop(), node)
            index >>= 1
        frontier.append(node)
    return size + count


def perfect_root(leaves: bytes) -> bytes:
    """The hash of a perfect subtree (2**k leaves) from its leaf hashes, one string."""
    return perfect_levels(leaves)[-1]


def perfect_levels(leaves: bytes) -> list[bytes]:
    """Every hash of a perfect subtree (2**k leaves) from its leaf hashes, one string: a string
    a level, the leaves first and the root last."""
    levels = [leaves]
    while len(levels[-1]) > 32:
        levels.append(_hash_each(_NODE, levels[-1], 64))
    return levels


def root(frontier: list[bytes]) -> str:
    """The tree's root hash (hex) from its frontier; SHA-256 of nothing for an empty tree."""
    if not frontier:
        return EMPTY_ROOT
    node = frontier[-1]
    for left in reversed(frontier[:-1]):
        node = node_hash(left, node)
    return node.hex()


def pack(frontier: list[bytes]) -> str:
    """The frontier as the head stores it: the hashes' hex, one after another."""
    return "".join(node.hex() for node in frontier)


def unpack(text: str | None) -> list[bytes]:
    """The frontier of `pack`."""
    text = text or ""
    return [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees, as (level, index), that make up leaves [start, end), left first."""
    parts = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        parts.append((level, start >> level))
        start += 1 << level
    return parts


def subtree_hash(node: NodeGetter, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from the stored perfect subtrees (RFC 9162's split is always at a
    power of two, so the parts fold from the right exactly as the RFC hashes)."""
    parts = [node(level, index) for level, index in perfect_subtrees(start, end)]
    result = parts[-1]
    for left in reversed(parts[:-1]):
        result = node_hash(left, result)
    return result


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(node: NodeGetter, m: int, n: int, start: int = 0) -> list[bytes]:
    """PATH(m, D[start:start+n]) of RFC 9162, section 2.1.3.1."""
    if n <= 1:
        return []
    k = _split(n)
    if m < k:
        return [*inclusion_path(node, m, k, start), subtree_hash(node, start + k, start + n)]
    return [*inclusion_path(node, m - k, n - k, start + k), subtree_hash(node, start, start + k)]


def consistency_path(
    node: NodeGetter, m: int, n: int, start: int = 0, whole: bool = True
) -> list[bytes]:
    """SUBPROOF(m, D[start:start+n], whole) of RFC 9162, section 2.1.4.1 (PROOF: whole)."""
    if m == n:
        return [] if whole else [subtree_hash(node, start, start + n)]
    k = _split(n)
    if m <= k:
        return [
            *consistency_path(node, m, k, start, whole),
            subtree_hash(node, start + k, start + n),
        ]
    return [
        *consistency_path(node, m - k, n - k, start + k, False),
        subtree_hash(node, start, start + k),
    ]


def positions_needed(proof: Callable[[NodeGetter], list[bytes]]) -> list[int]:
    """The stored subtrees `proof` reads, by position, in order: run once with a getter that
    only takes note, so that they can all be fetched in one query before `proof_from`."""
    needed: set[int] = set()

    def record(level: int, index: int) -> bytes:
        needed.add(position(level, index))
        return bytes(32)

    proof(record)
    return sorted(needed)


def proof_from(proof: Callable[[NodeGetter], list[bytes]], stored: dict[int, bytes]) -> list[str]:
    """`proof`'s hashes, in hex, over the stored subtrees `stored` ({position: hash}) holds."""
    return [part.hex() for part in proof(lambda level, index: stored[position(level, index)])]


# -- tiles ----------------------------------------------------------------------------------
# A proof reads one stored subtree a level, each far from the last in the in-order layout, so
# from a large tree each comes from its own page of disk. A *tile* keeps TILE_HEIGHT levels of
# a perfect subtree together, as Go's checksum database and sigsum store their trees: the
# subtree of height TILE_HEIGHT under a root at a level that is a multiple of TILE_HEIGHT,
# with its nodes down to TILE_HEIGHT levels below the root (62 hashes, the root itself not
# included: it is in the tile above), in position order. A proof then reads a tile per
# TILE_HEIGHT levels. Tiles are stored once complete, beside the nodes they copy.

TILE_HEIGHT = 5
_HALF = (1 << TILE_HEIGHT) - 1  # a tile's members on either side of its root


def level_of(at: int) -> int:
    """The level of the perfect subtree at position `at` (position + 1 = 2**level * odd)."""
    return ((at + 1) & -(at + 1)).bit_length() - 1


def is_tile_root(at: int) -> bool:
    """Whether completing the subtree at `at` completes a tile (the one below it)."""
    level = level_of(at)
    return level > 0 and level % TILE_HEIGHT == 0


def tile_members(root: int) -> list[int]:
    """The positions a tile holds, in order: those of the subtree under `root` whose level is
    at least the tile's lowest (they are `2**lowest` apart), but the root's."""
    step = 1 << (level_of(root) - TILE_HEIGHT)
    return [root + m * step for m in range(-_HALF, _HALF + 1) if m]


def tile_root(at: int, size: int) -> int | None:
    """The root of the tile that holds position `at`, when that tile is complete in a tree of
    `size` leaves (and so stored once the tree has that size); None when it is not."""
    level = level_of(at)
    top = (level // TILE_HEIGHT + 1) * TILE_HEIGHT
    index = (at >> (level + 1)) >> (top - level)
    return position(top, index) if (index + 1) << top <= size else None


def plan(needed: Iterable[int], size: int) -> tuple[list[int], dict[int, int]]:
    """Where to read the stored subtrees at `needed` in a tree of `size` leaves: the positions
    to read one by one (those in no complete tile), and {position: the root of its tile} for
    the others."""
    nodes, tiled = [], {}
    for at in needed:
        root = tile_root(at, size)
        if root is None:
            nodes.append(at)
        else:
            tiled[at] = root
    return nodes, tiled


def tile_hash(root: int, tile: bytes, at: int) -> bytes:
    """The hash at position `at` in the tile of `root` (`tile_members` order)."""
    m = (at - root) >> (level_of(root) - TILE_HEIGHT)  # -31..31, the root (0) left out
    i = m + _HALF - (m > 0)
    return tile[i * 32 : i * 32 + 32]


# -- verification (RFC 9162, sections 2.1.3.2 and 2.1.4.2) ----------------------------------


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, path: list[bytes], root_hash: bytes
) -> bool:
    """Whether `path` proves leaf `leaf_index` (hash `leaf`) in the tree of `root_hash`."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root_hash


def verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """Whether `path` proves the tree of `second_hash` extends the one of `first_hash`."""
    if first > second:
        return False
    if first == second:
        return not path and first_hash == second_hash
    if first == 0:
        return not path
    if not path:
        return False
    if first & (first - 1) == 0:  # a power of two: first_hash opens the path
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0
