"""The fast pass of `flask audit verify --workers N` (backend/audit/segment_scan.py): PostgreSQL
hashes each row itself, and Python's chain.row_hash and merkle.append stay the independent
check of what it computes. Whatever the pass finds wrong, verify names the row one walk names."""

import random

import pytest
import sqlalchemy as sa

from backend.audit import chain, merkle, segment_scan, segments
from backend.extensions import db
from backend.models import AuditChain, Log
from tests.conftest import postgresql_only
from tests.helpers import (
    CHECKPOINT_EVERY_3,
    both_ways,
    make_trail,
    stored_rows,
    tampering,
    verify_line,
    write,
)

# What a row's hashed fields can hold that JSON writes with care: quotes, backslashes, control
# characters, characters beyond ASCII and the BMP, and details nested and mixed, with keys that
# jsonb orders as json.dumps does (by length, then code point: "", "a", "b", "é").
AWKWARD_TRACK = 'a "quote", a \\ backslash, \n\t\r\b\f \x01\x1f\x7f, é, ü, 😀, \u2028 and }{'
AWKWARD_DETAILS = {
    "b": [1, 2.5, True, False, None, 'x"y', [], {}],
    "é": {"b": ["d", {"e": -3}], "ä": "no NUL; a no-break space:\u00a0,\\ and \x1f"},
    "a": {"changes": {"password": ["[redacted]", "[redacted]"]}},
    "": "an empty key",
}
# Nested as deep as anything: SQL needs no walk of it.
DEEP_DETAILS = {"a": {"b": {"c": {"d": {"e": [1, {"f": [{}]}]}}}}}
# What SQL leaves to Python: keys jsonb orders otherwise ("zeta" before "Alpha", shorter
# first), a string with the ", " and ": " jsonb puts between members, and a number PostgreSQL
# writes as 0.0000001 where Python writes 1e-07.
PYTHON_DETAILS = {
    "unordered": {"zeta": 1, "Alpha": 2},
    "spaced": {"a": "x, y: z"},
    "tiny": {"tiny": 1e-07},
}


def test_extending_the_tree_at_once_grows_the_frontier_leaf_by_leaf_append_grows():
    rng = random.Random(18)
    for start, count in [(0, 1), (0, 64), (1, 1), (5, 27), (8, 8), (1000, 3001), (1023, 2)]:
        leaves = [rng.randbytes(32) for _ in range(start + count)]
        one_by_one, at_once = [], []
        merkle.append(one_by_one, 0, leaves)
        merkle.append(at_once, 0, leaves[:start])
        size = merkle.extend(at_once, start, b"".join(leaves[start:]))
        assert (size, at_once) == (start + count, one_by_one)


def awkward_trail(app) -> None:
    write(app, track=AWKWARD_TRACK, user="Zoë 😀", details=AWKWARD_DETAILS, target="t\x02")
    write(app, track="deep", details=DEEP_DETAILS)
    for track, details in PYTHON_DETAILS.items():
        write(app, track=track, details=details)
    write(app, track="plain", status=404, actor_id=7, token_id=9, outcome="failure")


def sql_hashes(app) -> dict[int, str]:
    with app.app_context(), db.engine.connect() as connection:
        query = sa.select(Log.id, segment_scan.row_hash_sql()).order_by(Log.id)
        return dict(connection.execute(query).all())


@postgresql_only
def test_postgresql_hashes_awkward_rows_as_python_does(app):
    awkward_trail(app)
    with app.app_context(), db.engine.connect() as connection:
        rows = stored_rows(connection)
    python = {row["id"]: chain.row_hash(row, row["prev_hash"]) for row in rows}
    assert python == {row["id"]: row["hash"] for row in rows}  # the stored hashes are right
    in_sql = sql_hashes(app)
    for row in rows:  # what SQL leaves to Python, it never hashes as Python does
        if row["track"] in PYTHON_DETAILS:
            assert in_sql.pop(row["id"]) != python.pop(row["id"]), row["details"]
    assert len(in_sql) == 3  # the awkward row, the deep one, the plain one
    assert in_sql == python


@postgresql_only
@pytest.mark.parametrize("character", ['"', "\\", "\x01", "\n", "\x1f", "\x7f", "\u2028", "é"])
def test_postgresql_writes_each_character_of_a_text_field_as_python_does(app, character):
    """SQL writes text fields between quotes as they are unless one holds what JSON escapes
    (segment_scan.ESCAPED), then as to_json does: each way, the hash Python makes."""
    for field in ("track", "user_agent", "target"):
        write(app, **{field: f"a{character}b"})
    with app.app_context(), db.engine.connect() as connection:
        rows = stored_rows(connection)
    assert sql_hashes(app) == {row["id"]: row["hash"] for row in rows}


@pytest.fixture(params=[segment_scan.BATCH, 3], ids=["one batch", "batches of 3"])
def batches(request, monkeypatch):
    """The pass as it runs (every row of a small trail in one COPY line), and with 3 rows a
    line: links, signed roots and missing rows where lines meet."""
    monkeypatch.setattr(segment_scan, "BATCH", request.param)


STORED = "the chain head's"  # scan_everything's end by default


def scan_everything(app, signed=None, roots=None, end=STORED) -> dict | None:
    """The fast pass over every row, from the genesis hash and an empty tree, to end on the
    tree the chain's head stores (or `end`: None when there is none to compare)."""
    with app.app_context(), db.engine.connect() as connection:
        head, stored = connection.execute(
            sa.select(AuditChain.last_id, AuditChain.tree_frontier)
        ).one()
        select = segment_scan.select(connection, 1, head, chain.GENESIS)
        return segment_scan.scan(
            connection.connection.driver_connection,
            select,
            (1, head),
            signed or {},
            roots or {},
            [],
            lambda rows: None,
            stored if end is STORED else end,
        )


def out_of_order(select):
    """segment_scan.select with each batch's lines joined in descending id order: what the
    pass would get if PostgreSQL fed its aggregate otherwise than the window orders them."""

    def reordered(*arguments) -> str:
        query = select(*arguments)
        joined = f"string_agg(line, E'\\x{segment_scan.SEPARATOR.hex()}')"
        assert joined in query
        return query.replace(joined, joined[:-1] + " ORDER BY id DESC)")

    return reordered


@postgresql_only
def test_the_fast_pass_finds_awkward_rows_intact_with_the_tree_append_makes(app, client, batches):
    make_trail(client, 3)
    awkward_trail(app)
    with app.app_context(), db.engine.connect() as connection:
        rows = stored_rows(connection)
        stored = connection.scalar(sa.select(AuditChain.tree_frontier))
    frontier = []
    merkle.append(frontier, 0, [merkle.leaf_hash(row["hash"]) for row in rows])
    found = scan_everything(app)
    assert found == {
        "rows": len(rows),
        "frontier": merkle.pack(frontier),
        "tree_broken": None,
        "versions": [[2, 1]],
    }
    assert found["frontier"] == stored


@postgresql_only
def test_the_fast_pass_checks_the_signed_roots_and_checkpoints_inside_its_rows(
    app, client, batches
):
    make_trail(client, 6)
    with app.app_context(), db.engine.connect() as connection:
        rows = stored_rows(connection)
    frontier = []
    merkle.append(frontier, 0, [merkle.leaf_hash(row["hash"]) for row in rows[:4]])
    good_root, good_hash = merkle.root(frontier), rows[2]["hash"]
    assert scan_everything(app, {3: good_hash}, {4: good_root}) is not None
    assert scan_everything(app, {3: good_hash}, {4: "0" * 64}) is None
    assert scan_everything(app, {3: "0" * 64}, {4: good_root}) is None


@postgresql_only
def test_the_fast_pass_sees_a_space_put_in_a_details_string(app, client):
    """Without its spaces, the jsonb text of {"note": "a, b: c"} is the canonical JSON of
    {"note": "a,b:c"}: the changed row must not pass for the row hashed."""
    write(app, track="commas", details={"note": "a,b:c"})
    make_trail(client, 2)
    assert scan_everything(app) is not None
    with tampering(app) as connection:
        connection.execute(
            sa.text("""UPDATE audit_log SET details = '{"note": "a, b: c"}' WHERE id = 1""")
        )
    assert scan_everything(app) is None


TAMPERINGS = {
    "a changed row": "UPDATE audit_log SET track = 'edited' WHERE id = 5",
    "a broken link": "UPDATE audit_log SET prev_hash = repeat('0', 64) WHERE id = 5",
    "a version gone down": "UPDATE audit_log SET chain_version = 1 WHERE id = 5",
    "a deleted row": "DELETE FROM audit_log WHERE id = 5",
    "three rows deleted": "DELETE FROM audit_log WHERE id BETWEEN 4 AND 6",
    "the last row deleted": "DELETE FROM audit_log WHERE id = 8",
}


@postgresql_only
@pytest.mark.parametrize("change", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_the_fast_pass_looks_closer_at_a_tampered_trail(app, client, batches, change):
    make_trail(client, 8)
    with tampering(app) as connection:
        connection.execute(sa.text("INSERT INTO audit_purge_permit (id) VALUES (1)"))
        connection.execute(sa.text(change))
        connection.execute(sa.text("DELETE FROM audit_purge_permit"))
    assert scan_everything(app) is None


@postgresql_only
def test_the_fast_pass_looks_closer_at_lines_out_of_order(app, client, batches, monkeypatch):
    make_trail(client, 8)
    assert scan_everything(app) is not None
    monkeypatch.setattr(segment_scan, "select", out_of_order(segment_scan.select))
    assert scan_everything(app) is None  # the leaves grew another tree


@postgresql_only
def test_the_fast_pass_looks_closer_at_a_tree_it_does_not_end_on(app, client, batches):
    make_trail(client, 8)
    with app.app_context(), db.engine.connect() as connection:
        stored = connection.scalar(sa.select(AuditChain.tree_frontier))
    assert scan_everything(app, end=stored) is not None
    last_digit_changed = stored[:-1] + ("1" if stored.endswith("0") else "0")
    assert scan_everything(app, end=last_digit_changed) is None
    assert scan_everything(app, end="") is None
    assert scan_everything(app, end=None) is None  # segments._stored_end found no stored tree


# -- the verdict, one walk and segments alike -----------------------------------------------


@pytest.fixture
def segments_for_a_small_trail(monkeypatch):
    monkeypatch.setattr(segments, "MIN_ROWS", 1)


@postgresql_only
def test_segments_find_awkward_rows_intact(app, client, runner, segments_for_a_small_trail):
    make_trail(client, 5)
    awkward_trail(app)
    single, parallel = both_ways(runner)
    assert single == (0, "intact: 11 rows (rows 1-11), no signed checkpoint yet")
    assert parallel == (0, "intact: 12 rows (rows 1-12), no signed checkpoint yet")


@postgresql_only
def test_segments_find_a_trail_intact_when_the_fast_pass_gets_its_lines_out_of_order(
    app, client, runner, segments_for_a_small_trail, monkeypatch
):
    make_trail(client, 12)
    monkeypatch.setattr(segment_scan, "select", out_of_order(segment_scan.select))
    assert verify_line(runner, "--workers", "3") == (
        0,
        "intact: 12 rows (rows 1-12), no signed checkpoint yet",
    )  # the processes walked their rows after the pass looked closer


@postgresql_only
def test_segments_name_a_broken_link_where_one_walk_does(
    app, client, runner, segments_for_a_small_trail
):
    make_trail(client, 12)
    with tampering(app) as connection:
        connection.execute(sa.text(TAMPERINGS["a broken link"]))
    single, parallel = both_ways(runner)
    assert parallel == single
    assert single[1].startswith("BROKEN at row 5: does not follow the row before it"), single


@postgresql_only
def test_segments_name_a_changed_awkward_row_where_one_walk_does(
    app, client, runner, segments_for_a_small_trail
):
    make_trail(client, 6)
    awkward_trail(app)
    make_trail(client, 3)
    with tampering(app) as connection:
        connection.execute(
            sa.text("UPDATE audit_log SET details = details || '{\"zeta\": 2}' WHERE id = 7")
        )
    single, parallel = both_ways(runner)
    altered = "BROKEN at row 7: altered: its hash does not match its content"
    assert parallel == single == (1, altered)


@postgresql_only
def test_segments_name_a_row_moved_before_year_one(app, client, runner, segments_for_a_small_trail):
    """to_char writes the year 2026 BC as 2026: without its era, a row moved back 4,051 years
    hashed as it was written, and the pass and the segments' walk both said intact. One walk
    (`--workers 1`) read the time as a datetime, which has no era: a DataError, not a verdict."""
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(
            sa.text(
                "UPDATE audit_log SET created_at ="
                " ((created_at AT TIME ZONE 'UTC')::text || '+00 BC')::timestamptz WHERE id = 4"
            )
        )
        moved = connection.scalar(sa.text("SELECT created_at::text FROM audit_log WHERE id = 4"))
    assert moved.endswith(" BC")
    altered = "BROKEN at row 4: altered: its hash does not match its content"
    single, parallel = both_ways(runner)
    assert parallel == single == (1, altered)


@postgresql_only
@CHECKPOINT_EVERY_3
def test_segments_name_a_checkpoint_with_a_bad_signature_where_one_walk_does(
    app, client, runner, segments_for_a_small_trail
):
    make_trail(client, 9)
    with tampering(app) as connection:
        connection.execute(
            sa.text("UPDATE audit_checkpoint SET mac = repeat('0', 64) WHERE log_id = 6")
        )
    single, parallel = both_ways(runner)
    assert parallel == single
    assert single[1].startswith("BROKEN at row 6: the checkpoint for this row is not signed"), (
        single
    )


@postgresql_only
def test_segments_name_a_wrong_tree_hash_in_the_head_where_one_walk_does(
    app, client, runner, segments_for_a_small_trail
):
    make_trail(client, 12)
    with tampering(app) as connection:
        connection.execute(sa.update(AuditChain).values(tree_frontier=sa.func.repeat("0", 64 * 2)))
    single, parallel = both_ways(runner)
    # The first walk's own row (cli.audit.verify) is appended on that wrong tree: the second
    # names the head's row too, one further.
    problem = "the Merkle tree kept in the chain's head does not match the rows"
    assert single == (1, f"BROKEN at row 12: {problem}")
    assert parallel == (1, f"BROKEN at row 13: {problem}")
