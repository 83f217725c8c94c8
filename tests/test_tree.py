"""The Merkle tree over the trail, its signed heads and proofs (CONTRACT.md, "Verifiable by
anyone"), on both databases, checked with the independent RFC 9162 code of tests/rfc9162.py."""

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from backend.audit import chain
from backend.audit.signing import all_heads
from backend.extensions import db
from backend.models import AuditChain, PurgePermit, TreeHead, TreeNode, TreeTile
from tests import rfc9162
from tests.conftest import ADMIN
from tests.helpers import (
    CHECKPOINT_EVERY_3,
    aged_trail,
    assert_broken,
    assert_error,
    flask_audit,
    make_trail,
    purge,
    recompute_chain,
    tampering,
)

KEY_FILE = "audit-tree-key.pem"


def public_key_of(path) -> bytes:
    key = load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def leaves(api) -> list[bytes]:
    """The leaf data of every row, in id order: the 32 bytes of its `hash`."""
    return [bytes.fromhex(row.hash) for row in api.rows()]


def listed_key(api) -> dict:
    [key] = [k for k in api.get("/v1/logs/keys").get_json()["keys"] if not k["retired_at"]]
    return key


def signed_head(api, token) -> tuple[dict, bytes]:
    """The latest tree head, its checkpoint's signature checked independently; its root."""
    head = api.get("/v1/logs/tree-head", token).get_json()
    key = listed_key(api)
    origin, size, root = rfc9162.open_signed_checkpoint(
        head["checkpoint"], key["name"], base64.b64decode(key["public_key"])
    )
    assert (origin, size, root.hex()) == (key["name"], head["tree_size"], head["root_hash"])
    return head, root


def new_key_file(path):
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    path.write_bytes(pem)
    return path


def test_the_keys_are_public_and_list_the_key_files_public_half(api, tmp_path):
    response = api.get("/v1/logs/keys")
    assert response.status_code == 200
    [key] = response.get_json()["keys"]
    assert key["algorithm"] == "Ed25519" and key["retired_at"] is None
    assert base64.b64decode(key["public_key"]) == public_key_of(tmp_path / KEY_FILE)


def test_the_signing_key_is_never_in_the_database(app, api, users, tmp_path):
    make_trail(api.client, 3)
    private = (tmp_path / KEY_FILE).read_text().splitlines()[1]
    with app.app_context(), tampering(app) as connection:
        tables = sa.inspect(connection).get_table_names()
        for table in tables:
            for row in connection.execute(sa.text(f"SELECT * FROM {table}")):
                assert private not in " ".join(map(str, row))


def test_the_tree_head_is_a_checkpoint_signed_by_a_listed_key_over_every_row(api, users):
    make_trail(api.client, 5)
    head, root = signed_head(api, users["admin"])
    assert root == rfc9162.mth(leaves(api)[: head["tree_size"]])


@CHECKPOINT_EVERY_3
def test_a_tree_head_is_signed_with_every_periodic_checkpoint(app, api, users):
    make_trail(api.client, 9)
    with app.app_context(), db.engine.connect() as connection:
        sizes = {head["tree_size"] for head in all_heads(connection)}
    assert {3, 6, 9, 12} <= sizes


def test_every_rows_inclusion_proof_verifies_against_the_signed_root(api, users):
    make_trail(api.client, 6)
    head, root = signed_head(api, users["admin"])
    data = leaves(api)
    for row_id in range(1, head["tree_size"] + 1):
        proof = api.get(f"/v1/logs/{row_id}/proof", users["admin"]).get_json()
        leaf = bytes.fromhex(proof["leaf_hash"])
        assert leaf == rfc9162.sha256(b"\x00" + data[row_id - 1])
        path = [bytes.fromhex(node) for node in proof["audit_path"]]
        assert rfc9162.verify_inclusion(row_id - 1, head["tree_size"], leaf, path, root)


def test_a_proof_at_an_earlier_tree_size_verifies_against_that_trees_root(api, users):
    make_trail(api.client, 6)
    proof = api.get("/v1/logs/2/proof?tree_size=5", users["admin"]).get_json()
    root = rfc9162.mth(leaves(api)[:5])
    path = [bytes.fromhex(node) for node in proof["audit_path"]]
    assert proof["tree_size"] == 5
    assert rfc9162.verify_inclusion(1, 5, bytes.fromhex(proof["leaf_hash"]), path, root)


def test_a_changed_row_does_not_verify_against_its_inclusion_proof(app, api, users):
    make_trail(api.client, 4)
    head, root = signed_head(api, users["admin"])
    proof = api.get("/v1/logs/2/proof", users["admin"]).get_json()
    with tampering(app) as connection:
        connection.execute(sa.text("UPDATE audit_log SET track = 'nothing to see' WHERE id = 2"))
    from backend.audit.chain import row_hash
    from tests.helpers import stored_rows

    with app.app_context(), tampering(app) as connection:
        row = stored_rows(connection)[1]
    changed = rfc9162.sha256(b"\x00" + bytes.fromhex(row_hash(row, row["prev_hash"])))
    path = [bytes.fromhex(node) for node in proof["audit_path"]]
    assert not rfc9162.verify_inclusion(1, head["tree_size"], changed, path, root)


def test_consistency_between_two_signed_heads_verifies(api, users):
    make_trail(api.client, 3)
    first = api.get("/v1/logs/tree-head", users["admin"]).get_json()
    make_trail(api.client, 4)
    data = leaves(api)
    second = len(data)
    body = api.get(
        f"/v1/logs/consistency?first={first['tree_size']}&second={second}", users["admin"]
    ).get_json()
    path = [bytes.fromhex(node) for node in body["consistency_path"]]
    assert rfc9162.verify_consistency(
        first["tree_size"],
        second,
        bytes.fromhex(first["root_hash"]),
        rfc9162.mth(data),
        path,
    )


def test_proofs_and_consistency_still_verify_after_a_purge(app, api, runner):
    aged_trail(api.client, old=4, new=3)
    before = leaves(api)
    result = purge(runner, "--yes")
    assert result.exit_code == 0, result.output
    api.create_user(*ADMIN, is_admin=True)
    users = {"admin": api.issue_token("admin")}
    first_left = api.rows()[0].id
    assert first_left > 4  # the old rows are gone, and the tree they were in still answers
    size = len(before)
    body = api.get(f"/v1/logs/consistency?first=3&second={size}", users["admin"]).get_json()
    path = [bytes.fromhex(node) for node in body["consistency_path"]]
    assert rfc9162.verify_consistency(3, size, rfc9162.mth(before[:3]), rfc9162.mth(before), path)
    proof = api.get(f"/v1/logs/{first_left}/proof?tree_size={size}", users["admin"]).get_json()
    path = [bytes.fromhex(node) for node in proof["audit_path"]]
    leaf = bytes.fromhex(proof["leaf_hash"])
    assert rfc9162.verify_inclusion(first_left - 1, size, leaf, path, rfc9162.mth(before))


def test_a_purged_row_has_no_proof_and_the_first_row_left_has_one(app, api, runner):
    # An admin's proof asks no row whether it is there (listing.ROW_ID): the newest purge
    # checkpoint says, not an older one (SQLite deletes two rows a batch here, each batch
    # after its own), nor a checkpoint of another kind (the anchor's, of the newest row).
    aged_trail(api.client, old=4, new=3)
    result = purge(runner, "--yes", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert flask_audit(runner, "anchor").exit_code == 0
    api.create_user(*ADMIN, is_admin=True)
    admin = api.issue_token("admin")
    first_left = api.rows()[0].id
    assert first_left > 4
    for query in ("", f"?tree_size={first_left}"):
        assert_error(api.get(f"/v1/logs/{first_left - 1}/proof{query}", admin), 404)
        assert api.get(f"/v1/logs/{first_left}/proof{query}", admin).status_code == 200


def test_a_row_past_the_newest_has_no_proof(api, users):
    newest = api.rows()[-1].id  # this request's own row comes after its answer
    assert_error(api.get(f"/v1/logs/{newest + 1}/proof", users["admin"]), 404)


def test_a_proof_beyond_the_tree_is_a_400_naming_tree_size(api, users):
    response = api.get("/v1/logs/1/proof?tree_size=100000", users["admin"])
    assert_error(response, 400, {"tree_size"})


def test_a_proof_of_a_tree_too_small_for_the_row_is_a_400_naming_tree_size(api, users):
    make_trail(api.client, 3)
    assert_error(api.get("/v1/logs/3/proof?tree_size=2", users["admin"]), 400, {"tree_size"})


def test_a_consistency_proof_needs_first_at_most_second(api, users):
    make_trail(api.client, 3)
    response = api.get("/v1/logs/consistency?first=3&second=2", users["admin"])
    assert_error(response, 400, {"first"})


def test_a_consistency_proof_needs_both_sizes(api, users):
    assert_error(api.get("/v1/logs/consistency", users["admin"]), 400, {"first", "second"})


def test_a_consistency_proof_beyond_the_tree_is_a_400_naming_second(api, users):
    response = api.get("/v1/logs/consistency?first=1&second=99999", users["admin"])
    assert_error(response, 400, {"second"})


def test_another_users_row_has_no_proof(api, users):
    alices_login = api.rows(event="login.success", user="alice")[0].id
    assert_error(api.get(f"/v1/logs/{alices_login}/proof", users["bob"]), 404)


def test_a_row_newer_than_the_latest_head_gets_a_head_signed_that_covers_it(
    app, api, users, monkeypatch
):
    monkeypatch.setattr(chain, "HEAD_EVERY", timedelta(hours=1))  # no head but the first's
    make_trail(api.client, 3)
    newest = api.rows()[-1].id
    assert signed_head(api, users["admin"])[0]["tree_size"] < newest
    proof = api.get(f"/v1/logs/{newest}/proof", users["admin"]).get_json()
    size = proof["tree_size"]
    assert size >= newest
    with app.app_context(), db.engine.connect() as connection:
        assert size in {head["tree_size"] for head in all_heads(connection)}
    path = [bytes.fromhex(node) for node in proof["audit_path"]]
    leaf, root = bytes.fromhex(proof["leaf_hash"]), rfc9162.mth(leaves(api)[:size])
    assert rfc9162.verify_inclusion(newest - 1, size, leaf, path, root)


def test_a_users_own_row_has_a_proof(api, users):
    bobs_login = api.rows(event="login.success", user="bob")[0].id
    response = api.get(f"/v1/logs/{bobs_login}/proof", users["bob"])
    assert response.status_code == 200
    assert response.json["leaf_index"] == bobs_login - 1


@pytest.mark.settings(AUDIT_LOG_ORIGIN="audit.example.com/trail")
def test_the_checkpoints_origin_is_the_configured_one(api, users):
    head, _ = signed_head(api, users["admin"])
    assert head["checkpoint"].startswith("audit.example.com/trail\n")


def test_a_new_key_retires_the_old_one_which_stays_listed(app, api, users, database_url, tmp_path):
    from backend import create_app, dispose_engines
    from tests.conftest import make_settings

    make_trail(api.client, 2)
    old_head, _ = signed_head(api, users["admin"])
    old_key = listed_key(api)
    key_file = new_key_file(tmp_path / "rotated.pem")
    rotated = create_app(
        make_settings(database_url, tmp_path, AUDIT_SIGNING_KEY_FILE=str(key_file))
    )
    try:
        make_trail(rotated.test_client(), 2)
        keys = rotated.test_client().get("/v1/logs/keys").get_json()["keys"]
    finally:
        dispose_engines(rotated)
    by_id = {key["key_id"]: key for key in keys}
    assert by_id[old_key["key_id"]]["retired_at"] is not None
    [current] = [key for key in keys if key["retired_at"] is None]
    assert base64.b64decode(current["public_key"]) == public_key_of(key_file)
    # The head the old key signed still verifies with it.
    rfc9162.open_signed_checkpoint(
        old_head["checkpoint"], old_key["name"], base64.b64decode(old_key["public_key"])
    )


def test_a_key_file_that_is_not_an_ed25519_key_stops_the_app_with_its_name(database_url, tmp_path):
    from backend import create_app
    from backend.audit.signing import KeyFileError
    from tests.conftest import make_settings

    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello\n")
    with pytest.raises(KeyFileError, match="not-a-key.pem"):
        create_app(make_settings(database_url, tmp_path, AUDIT_SIGNING_KEY_FILE=str(bad)))


# -- `flask audit verify` on the database checks the tree too --------------------------------


def test_verify_names_rows_that_no_longer_hash_to_a_signed_tree_head(app, api, users, runner):
    make_trail(api.client, 4)
    size = len(api.rows())
    # A proof of the last row has a tree head of every row signed (and no HMAC checkpoint).
    assert api.get(f"/v1/logs/{size}/proof", users["admin"]).get_json()["tree_size"] == size
    with tampering(app) as connection:
        recompute_chain_keeping_the_tree(connection, 2, track="nothing happened")
    assert_broken(
        runner,
        f"BROKEN at row {size}: the rows up to here do not hash to the signed tree head of size"
        f" {size}",
    )


def test_verify_names_a_tree_head_forged_in_the_database(app, api, users, runner):
    make_trail(api.client, 3)
    flask_audit(runner, "anchor")
    with tampering(app) as connection:
        head = connection.execute(sa.select(TreeHead).order_by(TreeHead.id.desc())).first()
        root = head.checkpoint.split("\n")[2]
        forged = head.checkpoint.replace(root, base64.b64encode(bytes(32)).decode())
        connection.execute(
            sa.insert(TreeHead).values(
                tree_size=head.tree_size,
                root_hash="00" * 32,
                created_at=head.created_at,
                key_id=head.key_id,
                checkpoint=forged,
            )
        )
    assert_broken(runner, f"BROKEN at row {head.tree_size}: the signed tree head of size")


def test_verify_reports_two_signed_heads_of_one_size_as_a_split_view(
    app, api, users, runner, tmp_path
):
    make_trail(api.client, 3)
    flask_audit(runner, "anchor")
    key = load_pem_private_key((tmp_path / KEY_FILE).read_bytes(), password=None)
    with tampering(app) as connection:
        head = connection.execute(sa.select(TreeHead).order_by(TreeHead.id.desc())).first()
        name = head.checkpoint.split("\n")[0]
        text = f"{name}\n{head.tree_size}\n{base64.b64encode(bytes(32)).decode()}\n"
        key_hash = hashlib.sha256(name.encode() + b"\n\x01" + public_key_of(tmp_path / KEY_FILE))
        signature = base64.b64encode(key_hash.digest()[:4] + key.sign(text.encode())).decode()
        connection.execute(
            sa.insert(TreeHead).values(
                tree_size=head.tree_size,
                root_hash="00" * 32,
                created_at=head.created_at,
                key_id=head.key_id,
                checkpoint=f"{text}\n\u2014 {name} {signature}\n",
            )
        )
    assert_broken(runner, f"BROKEN at row {head.tree_size}: split view")


def recompute_chain_keeping_the_tree(connection, row_id: int, **changes) -> None:
    """recompute_chain, but leaving the tree's nodes and signed heads as they were."""
    stored = connection.execute(sa.select(TreeNode.position, TreeNode.hash)).all()
    stored_tiles = connection.execute(sa.select(TreeTile.__table__)).mappings().all()
    heads = connection.execute(sa.select(TreeHead.__table__)).mappings().all()
    frontier = connection.scalar(sa.select(AuditChain.tree_frontier))
    recompute_chain(connection, row_id, **changes)
    connection.execute(sa.insert(PurgePermit).values(id=1))
    connection.execute(sa.delete(TreeNode))
    connection.execute(sa.delete(TreeTile))
    connection.execute(sa.delete(PurgePermit))
    connection.execute(sa.insert(TreeNode), [dict(row._mapping) for row in stored])
    if stored_tiles:
        connection.execute(sa.insert(TreeTile), [dict(tile) for tile in stored_tiles])
    connection.execute(sa.insert(TreeHead), [dict(head) for head in heads])
    connection.execute(sa.update(AuditChain).values(tree_frontier=frontier))


@contextmanager
def request_statements(app) -> Iterator[list[str]]:
    """The statements requests make on the request engine while the block runs, but for
    their token's lookup (the audit rows go through the writer's own engine)."""
    seen: list[str] = []

    def record(connection, cursor, statement, *args) -> None:
        if "tokens" not in statement:
            seen.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


# Whether the row is there for the viewer: for an admin, from the purges alone (no row is
# read: listing.ROW_ID); for anyone else, from the row's `user`.
VISIBILITY_READS = {"admin": "audit_checkpoint", "alice": "audit_log"}


@pytest.mark.parametrize("viewer", VISIBILITY_READS)
def test_a_proof_at_a_given_size_is_one_query(app, api, users, viewer):
    make_trail(api.client, 37)  # a path of six levels
    row = 5 if viewer == "admin" else api.rows(event="login.success", user="alice")[0].id
    with request_statements(app) as seen:
        proof = api.get(f"/v1/logs/{row}/proof?tree_size=37", users[viewer]).get_json()
    assert len(proof["audit_path"]) == 6
    # The tree's size, the row's visibility and every stored hash the path needs, together.
    assert len(seen) == 1, seen
    tables = ("audit_chain", VISIBILITY_READS[viewer], "audit_tree_node")
    assert all(table in seen[0] for table in tables)
    assert ("audit_log" in seen[0]) == (viewer != "admin")
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(row - 1, 37, leaf, path, rfc9162.mth(leaves(api)[:37]))


def test_a_proof_at_the_latest_head_is_one_query_once_the_heads_size_is_known(
    app, api, users, monkeypatch
):
    monkeypatch.setattr(chain, "HEAD_EVERY", timedelta(hours=1))  # no new head meanwhile
    make_trail(api.client, 37)
    api.get("/v1/logs/5/proof", users["admin"])  # reads the latest head's size
    with request_statements(app) as seen:
        proof = api.get("/v1/logs/5/proof", users["admin"]).get_json()
    assert len(seen) == 1, seen
    tables = ("audit_tree_head", "audit_chain", "audit_checkpoint", "audit_tree_node")
    assert all(table in seen[0] for table in tables)
    assert "audit_log" not in seen[0]
    head, root = signed_head(api, users["admin"])
    assert proof["tree_size"] == head["tree_size"]
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(4, head["tree_size"], leaf, path, root)


@CHECKPOINT_EVERY_3
def test_a_proof_after_heads_this_process_has_not_read_is_at_the_latest(app, api, users):
    make_trail(api.client, 5)
    before = api.get("/v1/logs/2/proof", users["admin"]).get_json()["tree_size"]
    make_trail(api.client, 10)  # heads signed by the writes, one every 3 rows
    with request_statements(app) as seen:
        proof = api.get("/v1/logs/2/proof", users["admin"]).get_json()
    size = proof["tree_size"]
    with app.app_context(), db.engine.connect() as connection:
        sizes = sorted(head["tree_size"] for head in all_heads(connection))
    # The latest head when it was asked (the request's own row may have had one signed since).
    assert before < size and size in sizes[-2:], (before, size, sizes)
    # The head with the hashes at the size last seen, which missed; then the hashes at its own.
    assert len(seen) == 2, seen
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(1, size, leaf, path, rfc9162.mth(leaves(api)[:size]))


def test_a_consistency_proof_is_one_query(app, api, users):
    make_trail(api.client, 37)
    with request_statements(app) as seen:
        body = api.get("/v1/logs/consistency?first=5&second=37", users["admin"]).get_json()
    assert len(body["consistency_path"]) >= 4
    assert len(seen) == 1, seen
    assert all(table in seen[0] for table in ("audit_chain", "audit_tree_node"))
    path = [bytes.fromhex(h) for h in body["consistency_path"]]
    hashes = leaves(api)
    assert rfc9162.verify_consistency(
        5, 37, rfc9162.mth(hashes[:5]), rfc9162.mth(hashes[:37]), path
    )


@pytest.mark.parametrize(
    "query", ["tree_size=9223372036854775807", "tree_size=4611686018427387904"]
)
def test_a_proof_at_a_size_beyond_any_tree_is_a_400_naming_tree_size(api, users, query):
    # Its path's positions are past 64 bits: none is asked for, and the size is refused.
    make_trail(api.client, 3)
    assert_error(api.get(f"/v1/logs/2/proof?{query}", users["admin"]), 400, {"tree_size"})


def test_a_consistency_proof_beyond_any_tree_is_a_400_naming_second(api, users):
    make_trail(api.client, 3)
    response = api.get("/v1/logs/consistency?first=1&second=9223372036854775807", users["admin"])
    assert_error(response, 400, {"second"})


def without_signed_heads(app) -> None:
    """The trail as migration 0009 leaves an existing one: its tree built, no head signed (a
    migration holds no key) until the next row is written."""
    with tampering(app) as connection:
        connection.execute(sa.insert(PurgePermit).values(id=1))
        connection.execute(sa.delete(TreeHead))
        connection.execute(sa.delete(PurgePermit))
        connection.execute(sa.update(AuditChain).values(tree_head_at=None))
    with app.app_context(), db.engine.connect() as connection:
        assert all_heads(connection) == []


def test_a_trail_with_no_signed_head_has_its_first_signed_by_its_first_proof(app, api, users):
    make_trail(api.client, 5)
    without_signed_heads(app)
    proof = api.get("/v1/logs/2/proof", users["admin"]).get_json()
    head, root = signed_head(api, users["admin"])
    assert proof["tree_size"] == head["tree_size"] >= 2
    leaf, path = bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(h) for h in proof["audit_path"]]
    assert rfc9162.verify_inclusion(1, head["tree_size"], leaf, path, root)
    without_signed_heads(app)
    assert_error(api.get("/v1/logs/1/proof", users["bob"]), 404)  # not bob's row
