"""Tiles of the Merkle tree (backend/audit/merkle.py, tiles.py): the writer stores each in the
transaction of the rows that complete it, migration 0014 builds them for a tree stored before,
and proofs read them; on both databases, each tile's hashes and each proof checked with the
independent RFC 9162 code of tests/rfc9162.py."""

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from backend.audit import merkle, proofs
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.extensions import db
from backend.models import PurgePermit, TreeTile
from backend.roles import owner_engine
from tests import rfc9162
from tests.helpers import tampering
from tests.test_tree import leaves, request_statements

ROWS = 1100  # 34 tiles of 32 leaves (levels 0-4), and the first of 1,024 (levels 5-9)


@pytest.fixture
def filled(app):
    """A trail of ROWS rows, appended 100 at a time as the writer's batches."""
    with app.app_context():
        for start in range(0, ROWS, 100):
            events = [
                AuditEvent(source="app", event="test.event", level="INFO", track=f"row {n}")
                for n in range(start, start + 100)
            ]
            assert None not in writer().write_batch(events)
    return app


def stored_tiles(app) -> dict[int, bytes]:
    with app.app_context(), db.engine.connect() as connection:
        return dict(connection.execute(sa.select(TreeTile.position, TreeTile.hashes)).all())


def expected_tiles(data: list[bytes], size: int) -> dict[int, bytes]:
    """Every complete tile of the tree of `size` leaves over `data`, from the RFC's MTH: under
    the subtree of 2**top leaves at a multiple of 2**top (top a multiple of 5), the subtrees of
    the 5 levels below it, in order of their middles (the in-order layout), hashed as MTH of
    their leaves; keyed by the root's in-order position, 2 * its middle - 1."""
    tiles = {}
    for top in (5, 10):
        for start in range(0, size - (1 << top) + 1, 1 << top):
            parts = [
                (start + k * (1 << level), 1 << level)
                for level in range(top - 5, top)
                for k in range(1 << (top - level))
            ]
            parts.sort(key=lambda part: 2 * part[0] + part[1])
            hashes = [rfc9162.mth(data[first : first + width]) for first, width in parts]
            tiles[2 * start + (1 << top) - 1] = b"".join(hashes)
    return tiles


def test_each_hash_a_proof_takes_from_a_tile_is_its_subtrees_mth():
    """merkle.tile_hash, by which a proof takes one hash from a tile, against the RFC's MTH of
    the subtree at that position (2 * its first leaf + its width - 1), for every member of
    every tile of a tree of ROWS leaves; no database."""
    data = [bytes([n % 251, n // 251]) * 16 for n in range(ROWS)]
    for root, tile in expected_tiles(data, ROWS).items():
        for at in merkle.tile_members(root):
            width = 1 << merkle.level_of(at)
            first = (at + 1 - width) // 2
            assert merkle.tile_hash(root, tile, at) == rfc9162.mth(data[first : first + width])


def test_the_writer_stores_every_tile_as_its_rows_complete_it(api, filled):
    assert stored_tiles(filled) == expected_tiles(leaves(api), ROWS)
    assert len(stored_tiles(filled)) == ROWS // 32 + ROWS // 1024


def test_a_proof_reads_the_tiles_that_hold_its_path(api, users, filled):
    reads = proofs.inclusion_reads(699, ROWS)
    # Of its 14 stored subtrees: levels 0-4 of the path in a tile of 32 leaves, 5-9 in the tile
    # of 1,024, and one by one the three that make up the tree's last 76 = 64 + 8 + 4 leaves,
    # in no complete tile.
    assert len(reads.needed) == 14 and len(reads.tiles) == 2 and len(reads.nodes) == 3, reads
    with request_statements(filled) as seen:
        proof = api.get(f"/v1/logs/700/proof?tree_size={ROWS}", users["admin"]).get_json()
    assert len(seen) == 1 and "audit_tree_tile" in seen[0], seen
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(699, ROWS, leaf, path, rfc9162.mth(leaves(api)[:ROWS]))


@pytest.mark.parametrize("size", [32, 33, 63, 64, 1023, 1024, 1025, ROWS])
def test_proofs_through_the_tiles_verify_at_every_kind_of_size(api, users, filled, size):
    data = leaves(api)
    root = rfc9162.mth(data[:size])
    for row_id in {1, 2, 31, 32, 33, size // 2, size - 1, size} & set(range(1, size + 1)):
        proof = api.get(f"/v1/logs/{row_id}/proof?tree_size={size}", users["admin"]).get_json()
        leaf = bytes.fromhex(proof["leaf_hash"])
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        assert rfc9162.verify_inclusion(row_id - 1, size, leaf, path, root), (row_id, size)
    for first in {1, 31, 32, 33, 1000, size - 1} & set(range(1, size)):
        query = f"/v1/logs/consistency?first={first}&second={size}"
        body = api.get(query, users["admin"]).get_json()
        path = [bytes.fromhex(h) for h in body["consistency_path"]]
        assert rfc9162.verify_consistency(first, size, rfc9162.mth(data[:first]), root, path)


def test_a_missing_tile_costs_a_second_query_not_a_wrong_proof(api, users, filled):
    with tampering(filled) as connection:  # as a tile the writer could not make would be
        connection.execute(sa.insert(PurgePermit).values(id=1))
        connection.execute(sa.delete(TreeTile).where(TreeTile.position == 2 * 640 + 31))
        connection.execute(sa.delete(PurgePermit))
    with request_statements(filled) as seen:
        proof = api.get(f"/v1/logs/650/proof?tree_size={ROWS}", users["admin"]).get_json()
    assert len(seen) == 2, seen
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(649, ROWS, leaf, path, rfc9162.mth(leaves(api)[:ROWS]))


def test_migration_0014_builds_the_tiles_of_a_tree_stored_before(api, filled):
    with filled.app_context():
        downgrade(revision="0013")
        upgrade()
    assert stored_tiles(filled) == expected_tiles(leaves(api), ROWS)


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_tree_tile SET hashes = hashes", "DELETE FROM audit_tree_tile"]
)
def test_tiles_are_append_only_as_the_nodes_they_copy(api, filled, statement):
    with filled.app_context(), pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with owner_engine().begin() as connection:  # the app's role may not even try
            connection.execute(sa.text(statement))
    assert stored_tiles(filled) == expected_tiles(leaves(api), ROWS)
