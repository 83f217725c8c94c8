"""`flask audit verify --tree` (backend/audit/stored_tree.py): every stored hash and tile of the
Merkle tree, which proofs are made of, checked against the rows; on both databases, each kind
of damage named by the rows under it. With the service's pieces (2**13 leaves: the 1,100 rows
are pieces of their own), and where a hash or tile lies above them when the pieces hold 64
leaves, with those too (BOTH_PIECES)."""

# ruff: noqa: F811  (`filled`, the fixture of tests/test_tiles.py, taken as an argument)

import json

import pytest
import sqlalchemy as sa

from backend.audit import merkle, segments, stored_tree
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.extensions import db
from tests import rfc9162
from tests.conftest import postgresql_only
from tests.helpers import aged_trail, flask_audit, purge, tampering, verify_line
from tests.test_tiles import ROWS, filled  # noqa: F401  (the fixture)
from tests.test_tree import leaves

TREE = ("audit_tree_node", "audit_tree_tile")
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def piece(request, monkeypatch):
    """The height of the pieces stored_tree reads: the service's unless parametrized."""
    height = getattr(request, "param", stored_tree.PIECE)
    monkeypatch.setattr(stored_tree, "PIECE", height)
    return height


BOTH_PIECES = pytest.mark.parametrize(
    "piece", [13, 6], ids=["pieces of 8192", "pieces of 64"], indirect=True
)


def at(level: int, index: int) -> int:
    return merkle.position(level, index)


def change_node(app, position: int) -> None:
    with tampering(app, TREE) as connection:
        connection.execute(
            sa.text("UPDATE audit_tree_node SET hash = :hash WHERE position = :position"),
            {"hash": "ab" * 32, "position": position},
        )


@BOTH_PIECES
def test_an_intact_tree_is_intact(api, runner, filled, piece):
    # The stored tree is the RFC's, computed here from the rows alone.
    data = leaves(api)
    with filled.app_context(), db.engine.connect() as connection:
        query = sa.text("SELECT hash FROM audit_tree_node WHERE position = :p")
        assert connection.scalar(query, {"p": at(10, 0)}) == rfc9162.mth(data[:1024]).hex()
    assert verify_line(runner, "--tree") == (
        0,
        f"intact: {ROWS} rows (rows 1-{ROWS}), signed up to row 1000;"
        " the tree's stored hashes and tiles too",
    )
    result = flask_audit(runner, "verify", "--tree", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "intact": True,
        "rows": ROWS + 1,  # the first verify's own row too
        "first_id": 1,
        "last_id": ROWS + 1,
        "signed_up_to": 1000,
        "broken_row": None,
        "problem": None,
        "versions": [[2, 1]],
        "tree": True,
    }


def test_a_changed_hash_inside_the_tree_is_named_with_its_rows(app, runner, filled, piece):
    change_node(app, at(3, 10))
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 81: the tree's stored hash of rows 81-88 (level 3) is not the hash of"
        " the hashes below it: proofs through it fail their check",
    )


def test_without_tree_the_rows_alone_are_checked(app, runner, filled):
    change_node(app, at(3, 10))
    assert verify_line(runner)[0] == 0


def test_a_changed_leaf_is_named_by_the_hash_above_it(app, runner, filled, piece):
    change_node(app, at(0, 500))
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 501: the tree's stored hash of rows 501-502 (level 1) is not the hash of"
        " the hashes below it: proofs through it fail their check",
    )


@BOTH_PIECES
def test_a_changed_hash_high_in_the_tree_is_named(app, runner, filled, piece):
    change_node(app, at(8, 2))  # above the pieces of 64 leaves
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 513: the tree's stored hash of rows 513-768 (level 8) is not the hash"
        " of the hashes below it: proofs through it fail their check",
    )


@pytest.mark.parametrize(
    ("statement", "wrong"),
    [
        ("DELETE FROM audit_tree_node WHERE position = :p", "is missing"),
        (
            "UPDATE audit_tree_node SET hash = 'not hex' WHERE position = :p",
            "is not a SHA-256 hash",
        ),
    ],
    ids=["missing", "not a hash"],
)
@pytest.mark.parametrize(
    ("level", "index", "rows", "piece"),
    [(2, 7, "rows 29-32", 13), (9, 0, "rows 1-512", 13), (9, 0, "rows 1-512", 6)],
    indirect=["piece"],
)
def test_a_hash_missing_or_not_a_hash_is_named(
    app, runner, filled, piece, statement, wrong, level, index, rows
):
    with tampering(app, TREE) as connection:
        connection.execute(sa.text(statement), {"p": at(level, index)})
    first = rows.split()[1].split("-")[0]
    assert verify_line(runner, "--tree") == (
        1,
        f"BROKEN at row {first}: the tree's stored hash of {rows} (level {level}) {wrong}:"
        " proofs through it fail",
    )


@sqlite_only
def test_hashes_split_otherwise_on_sqlite_are_named(app, runner, filled, piece):
    # Together the same hex, one character moved from a hash to the next: SQLite keeps both
    # (PostgreSQL's varchar(64) refuses the longer), and a proof could read neither.
    first, second = at(1, 20), at(1, 20) + 1  # a hash, and the leaf after it in the layout
    with tampering(app, TREE) as connection:
        query = sa.text("SELECT hash FROM audit_tree_node WHERE position = :p")
        one, two = (connection.scalar(query, {"p": p}) for p in (first, second))
        update = sa.text("UPDATE audit_tree_node SET hash = :hash WHERE position = :p")
        connection.execute(update, {"hash": one[:63], "p": first})
        connection.execute(update, {"hash": one[63] + two, "p": second})
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 42: the tree's stored hash of row 42 (level 0) is not a SHA-256 hash:"
        " proofs through it fail",
    )


def test_a_row_of_the_tiles_table_that_is_no_tile_is_not_read(app, runner, filled, piece):
    with tampering(app, TREE) as connection:  # position 4 is a leaf's: no proof reads a tile there
        connection.execute(
            sa.text("INSERT INTO audit_tree_tile (position, hashes) VALUES (4, :h)"),
            {"h": b"junk"},
        )
    assert verify_line(runner, "--tree")[0] == 0


@pytest.mark.parametrize(
    ("top", "index", "rows", "piece"),
    [(5, 3, "rows 97-128", 13), (10, 0, "rows 1-1024", 13), (10, 0, "rows 1-1024", 6)],
    indirect=["piece"],
)
def test_a_changed_tile_is_named(app, runner, filled, piece, top, index, rows):
    with tampering(app, TREE) as connection:
        tile = connection.scalar(
            sa.text("SELECT hashes FROM audit_tree_tile WHERE position = :p"),
            {"p": at(top, index)},
        )
        changed = bytes(tile)[:100] + bytes([tile[100] ^ 1]) + bytes(tile)[101:]
        connection.execute(
            sa.text("UPDATE audit_tree_tile SET hashes = :h WHERE position = :p"),
            {"h": changed, "p": at(top, index)},
        )
    first = rows.split()[1].split("-")[0]
    assert verify_line(runner, "--tree") == (
        1,
        f"BROKEN at row {first}: the stored tile of {rows} differs from the tree's hashes it"
        " copies: proofs through it fail their check",
    )


def test_stored_leaves_that_are_not_the_rows_are_found_by_the_frontier(
    app,
    runner,
    filled,
    piece,
):
    with app.app_context():  # 1,101 rows: the last leaf is a part of the tree's frontier alone
        writer().write_batch(
            [AuditEvent(source="app", event="test.event", level="INFO", track="one more")]
        )
    change_node(app, at(0, ROWS))  # no stored hash above it to disagree
    assert verify_line(runner, "--tree") == (
        1,
        f"BROKEN at row {ROWS + 1}: the tree's stored hashes of row {ROWS + 1} do not match"
        " the rows: proofs of them fail their check",
    )


def test_tree_is_for_the_database_not_an_export(runner, tmp_path):
    export = tmp_path / "trail.ndjson"
    export.write_text("")
    result = runner.invoke(
        args=["audit", "verify", "--file", str(export), "--keys", str(export), "--tree"]
    )
    assert result.exit_code == 2
    assert "--tree checks the database's stored tree, not an export" in result.output


def test_a_purge_keeps_the_tree_it_checks(app, api, runner, piece):
    aged_trail(api.client, old=40, new=30)
    assert purge(runner, "--yes").exit_code == 0
    assert api.rows()[0].id > 40
    code, line = verify_line(runner, "--tree")
    assert code == 0 and line.startswith("intact:") and "after the signed purge of rows 1-" in line
    change_node(app, at(0, 2))  # a purged row's leaf: still in the tree the heads signed
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 3: the tree's stored hash of rows 3-4 (level 1) is not the hash of the"
        " hashes below it: proofs through it fail their check",
    )


@BOTH_PIECES
def test_a_subtree_rewritten_whole_is_found_by_the_frontier(app, runner, filled, piece):
    # A leaf of rows 1-1024 changed with every hash above it and both tiles that copy them, so
    # the stored tree agrees with itself: only the rows say otherwise.
    with tampering(app, TREE) as connection:
        nodes = {
            p: bytes.fromhex(h)
            for p, h in connection.execute(sa.text("SELECT position, hash FROM audit_tree_node"))
        }
        level, index = 0, 5
        nodes[at(level, index)] = bytes(32)
        while level < 10:
            pair = (at(level, index & ~1), at(level, index | 1))
            level, index = level + 1, index >> 1
            nodes[at(level, index)] = merkle.node_hash(nodes[pair[0]], nodes[pair[1]])
            connection.execute(
                sa.text("UPDATE audit_tree_node SET hash = :h WHERE position = :p"),
                {"h": nodes[at(level, index)].hex(), "p": at(level, index)},
            )
        connection.execute(
            sa.text("UPDATE audit_tree_node SET hash = :h WHERE position = :p"),
            {"h": bytes(32).hex(), "p": at(0, 5)},
        )
        for root in (at(5, 0), at(10, 0)):
            tile = b"".join(nodes[m] for m in merkle.tile_members(root))
            connection.execute(
                sa.text("UPDATE audit_tree_tile SET hashes = :h WHERE position = :p"),
                {"h": tile, "p": root},
            )
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 1: the tree's stored hashes of rows 1-1024 do not match the rows:"
        " proofs of them fail their check",
    )


@postgresql_only
@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ([(1, 400)], "rows 801-802 (level 1)"),  # in the second process's pieces
        ([(1, 400), (2, 10)], "rows 41-44 (level 2)"),  # and in the first's
    ],
)
def test_a_finding_of_the_processes_is_the_one_one_process_names(
    app, runner, filled, monkeypatch, changed, named
):
    monkeypatch.setattr(segments, "MIN_ROWS", 1)
    monkeypatch.setattr(stored_tree, "PIECE", 6)  # 20 pieces: 2 processes of 10
    for level, index in changed:
        change_node(app, at(level, index))
    first = named.split()[1].split("-")[0]
    expected = (
        1,
        f"BROKEN at row {first}: the tree's stored hash of {named} is not the hash of the hashes"
        " below it: proofs through it fail their check",
    )
    assert verify_line(runner, "--tree", "--workers", "2") == expected
    assert verify_line(runner, "--tree", "--workers", "1") == expected


@postgresql_only
def test_segments_end_on_the_tree_the_stored_hashes_make(app, runner, filled, monkeypatch):
    monkeypatch.setattr(segments, "MIN_ROWS", 1)
    monkeypatch.setattr(stored_tree, "PIECE", 6)  # 21 pieces: 2 processes
    assert verify_line(runner, "--tree", "--workers", "2")[0] == 0
    # The first verify's own row makes ROWS + 1: the last leaf, alone a part of the frontier
    # that the segments join.
    change_node(app, at(0, ROWS))
    size = ROWS + 1
    assert verify_line(runner, "--tree", "--workers", "2") == (
        1,
        f"BROKEN at row {size}: the tree's stored hashes of row {size} do not match the rows:"
        " proofs of them fail their check",
    )


def test_a_purged_rows_stored_hash_that_is_not_one_is_a_verdict_not_a_crash(app, api, runner):
    # The rows' check (without --tree) starts from the stored frontier of the purged rows.
    aged_trail(api.client, old=40, new=30)
    assert purge(runner, "--yes").exit_code == 0
    purged = api.rows()[0].id - 1
    level, index = merkle.perfect_subtrees(0, purged)[0]
    with tampering(app, TREE) as connection:
        connection.execute(
            sa.text("UPDATE audit_tree_node SET hash = 'not hex' WHERE position = :p"),
            {"p": at(level, index)},
        )
    assert verify_line(runner) == (
        1,
        f"BROKEN at row {purged}: the Merkle tree's hashes of the purged rows are not all hashes",
    )
