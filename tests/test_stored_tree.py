"""`flask audit verify --tree` (backend/audit/stored_tree.py): every stored hash and tile of the
Merkle tree, which proofs are made of, checked against the rows; on both databases, each kind
of damage named by the rows under it. Run with the service's pieces (2**13 leaves: the 1,100
rows are pieces of their own) and with pieces of 64 leaves, so that hashes and a tile above
the pieces are checked too."""

# ruff: noqa: F811  (`filled`, the fixture of tests/test_tiles.py, taken as an argument)

import pytest
import sqlalchemy as sa

from backend.audit import merkle, segments, stored_tree
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.extensions import db
from tests import rfc9162
from tests.conftest import postgresql_only
from tests.helpers import aged_trail, purge, tampering, verify_line
from tests.test_tiles import ROWS, filled  # noqa: F401  (the fixture)
from tests.test_tree import leaves

TREE = ("audit_tree_node", "audit_tree_tile")


@pytest.fixture(params=[13, 6], ids=["pieces of 8192", "pieces of 64"])
def piece(request, monkeypatch):
    monkeypatch.setattr(stored_tree, "PIECE", request.param)
    return request.param


def at(level: int, index: int) -> int:
    return merkle.position(level, index)


def change_node(app, position: int) -> None:
    with tampering(app, TREE) as connection:
        connection.execute(
            sa.text("UPDATE audit_tree_node SET hash = :hash WHERE position = :position"),
            {"hash": "ab" * 32, "position": position},
        )


def test_an_intact_tree_is_intact(api, runner, filled, piece):
    # The stored tree is the RFC's, computed here from the rows alone.
    data = leaves(api)
    with filled.app_context(), db.engine.connect() as connection:
        query = sa.text("SELECT hash FROM audit_tree_node WHERE position = :p")
        assert connection.scalar(query, {"p": at(10, 0)}) == rfc9162.mth(data[:1024]).hex()
    assert verify_line(runner, "--tree") == (
        0,
        f"intact: {ROWS} rows (rows 1-{ROWS}), signed up to row 1000",
    )


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


def test_a_changed_hash_high_in_the_tree_is_named(app, runner, filled, piece):
    change_node(app, at(8, 2))  # above the pieces of 64 leaves
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 513: the tree's stored hash of rows 513-768 (level 8) is not the hash"
        " of the hashes below it: proofs through it fail their check",
    )


@pytest.mark.parametrize(("level", "index", "rows"), [(2, 7, "rows 29-32"), (9, 0, "rows 1-512")])
def test_a_missing_hash_is_named(app, runner, filled, piece, level, index, rows):
    with tampering(app, TREE) as connection:
        connection.execute(
            sa.text("DELETE FROM audit_tree_node WHERE position = :p"), {"p": at(level, index)}
        )
    first = rows.split()[1].split("-")[0]
    assert verify_line(runner, "--tree") == (
        1,
        f"BROKEN at row {first}: the tree's stored hash of {rows} (level {level}) is missing:"
        " proofs through it fail",
    )


def test_a_hash_that_is_not_one_is_named(app, runner, filled, piece):
    with tampering(app, TREE) as connection:
        connection.execute(
            sa.text("UPDATE audit_tree_node SET hash = 'not hex' WHERE position = :p"),
            {"p": at(1, 20)},
        )
    assert verify_line(runner, "--tree") == (
        1,
        "BROKEN at row 41: the tree's stored hash of rows 41-42 (level 1) is not a SHA-256"
        " hash: proofs through it fail",
    )


@pytest.mark.parametrize(("top", "index", "rows"), [(5, 3, "rows 97-128"), (10, 0, "rows 1-1024")])
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


@postgresql_only
def test_segments_end_on_the_tree_the_stored_hashes_make(app, runner, filled, piece, monkeypatch):
    monkeypatch.setattr(segments, "MIN_ROWS", 1)
    assert verify_line(runner, "--tree", "--workers", "3")[0] == 0
    # The first verify's own row makes ROWS + 1: the last leaf, alone a part of the frontier
    # that the segments join.
    change_node(app, at(0, ROWS))
    size = ROWS + 1
    assert verify_line(runner, "--tree", "--workers", "3") == (
        1,
        f"BROKEN at row {size}: the tree's stored hashes of row {size} do not match the rows:"
        " proofs of them fail their check",
    )
