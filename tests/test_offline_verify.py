"""The auditor's offline check, `flask audit verify --file EXPORT --keys KEYS.json
[--checkpoint SAVED]` (and `python -m backend.audit.offline`): an export, the public keys and
the signed heads, no database and no secret. Tamper tests on both databases."""

import base64
import json
import os
import re
import subprocess
import sys

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import config
from backend.audit import merkle, tiles
from backend.audit.chain import row_hash
from backend.models import AuditChain, TreeNode
from tests.helpers import (
    aged_trail,
    flask_audit,
    make_trail,
    purge,
    stored_rows,
    tampering,
)

KEY_FILE = "audit-tree-key.pem"


def saved(runner, tmp_path) -> dict:
    """What an auditor keeps: the export, the keys, the signed heads beside the export."""
    files = {
        "export": (tmp_path / "trail.ndjson", ["export"]),
        "keys": (tmp_path / "keys.json", ["keys"]),
        "heads": (tmp_path / "trail.ndjson.heads", ["heads"]),
    }
    for path, command in files.values():
        result = flask_audit(runner, *command)
        assert result.exit_code == 0, result.output
        path.write_text(result.stdout)
    return {name: path for name, (path, _) in files.items()}


def offline(runner, files: dict, *extra: str) -> tuple[int, str]:
    result = flask_audit(
        runner, "verify", "--file", str(files["export"]), "--keys", str(files["keys"]), *extra
    )
    return result.exit_code, result.stdout.strip()


def export_lines(files: dict) -> list[dict]:
    return [json.loads(line) for line in files["export"].read_text().splitlines()]


def rewrite_export(files: dict, rows: list[dict]) -> None:
    files["export"].write_text("".join(json.dumps(row) + "\n" for row in rows))


def signed_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """A C2SP signed note of `text`, built here from the spec (not with backend's code)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    import hashlib

    key_hash = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    signature = base64.b64encode(key_hash + key.sign(text.encode())).decode()
    return f"{text}\n\u2014 {name} {signature}\n"


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def test_an_intact_export_verifies_offline(api, users, runner, tmp_path):
    make_trail(api.client, 5)
    rows = len(api.rows())  # the export (a `flask` command) adds rows of its own after it
    code, line = offline(runner, saved(runner, tmp_path))
    assert code == 0, line
    assert line.startswith(f"intact: {rows} rows")


def test_the_offline_verifier_needs_no_settings_and_no_database(api, users, runner, tmp_path):
    make_trail(api.client, 3)
    files = saved(runner, tmp_path)
    # An empty environment and another directory: no DATABASE_URL, no secret, no .env.
    done = subprocess.run(
        [sys.executable, "-m", "backend.audit.offline", "--file", str(files["export"])]
        + ["--keys", str(files["keys"])],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(config.ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("intact: ")


def test_a_row_removed_from_the_export_is_named(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    rows = export_lines(files)
    rewrite_export(files, rows[:2] + rows[3:])
    assert offline(runner, files) == (
        1,
        f"BROKEN at row 3: missing: the row was removed (the next row in the export is"
        f" {rows[3]['id']})",
    )


def test_rows_reordered_in_the_export_are_named(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    rows = export_lines(files)
    rewrite_export(files, [*rows[:2], rows[3], rows[2], *rows[4:]])
    code, line = offline(runner, files)
    assert code == 1
    assert line.startswith("BROKEN at row 3: missing"), line


def test_a_row_changed_in_the_export_is_named(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    rows = export_lines(files)
    rows[2]["track"] = "nothing happened"
    rewrite_export(files, rows)
    assert offline(runner, files) == (
        1,
        "BROKEN at row 3: altered: its hash does not match its content",
    )


def test_a_tree_head_forged_without_the_private_key_is_refused(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    head = json.loads(files["heads"].read_text().splitlines()[-1])
    size, root = head["checkpoint"].split("\n")[1:3]
    # The same signature line under another root: what one can do without the private key.
    forged = head["checkpoint"].replace(root, base64.b64encode(bytes(32)).decode())
    files["heads"].write_text(json.dumps({**head, "checkpoint": forged}) + "\n")
    code, line = offline(runner, files)
    assert code == 1
    assert f"the tree head of size {size} in trail.ndjson.heads is not valid" in line, line


def test_history_rewritten_and_signed_with_an_unlisted_key_is_refused(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    rows = export_lines(files)
    # Whoever rewrites row 2 recomputes every hash after it and signs a head of their own.
    rows[1]["track"] = "rewritten"
    prev_hash, frontier, size = rows[0]["hash"], [], 0
    size, _ = merkle.append(frontier, size, [merkle.leaf_hash(rows[0]["hash"])])
    for row in rows[1:]:
        row["prev_hash"], row["hash"] = prev_hash, row_hash(row, prev_hash)
        prev_hash = row["hash"]
        size, _ = merkle.append(frontier, size, [merkle.leaf_hash(row["hash"])])
    rewrite_export(files, rows)
    name = json.loads(files["keys"].read_text())["keys"][0]["name"]
    text = checkpoint_text(name, size, bytes.fromhex(merkle.root(frontier)))
    note = signed_note(text, name, Ed25519PrivateKey.generate())
    files["heads"].write_text(json.dumps({"checkpoint": note}) + "\n")
    code, line = offline(runner, files)
    assert code == 1
    assert "signed by no listed key" in line, line


def test_a_saved_head_refuses_a_trail_truncated_and_regrown(app, api, users, runner, tmp_path):
    make_trail(api.client, 6)
    anchored = flask_audit(runner, "anchor")
    assert anchored.exit_code == 0
    saved_head = tmp_path / "saved-checkpoint.txt"
    saved_head.write_text(anchored.stdout)
    size = int(anchored.stdout.split("\n")[1])
    truncate_to(app, 4)
    make_trail(api.client, size)  # regrown past the saved head
    files = saved(runner, tmp_path)
    files["heads"].write_text("")  # the heads the truncation contradicts were dropped too
    code, line = offline(runner, files, "--checkpoint", str(saved_head))
    assert code == 1
    assert line == (
        f"BROKEN at row {size}: the rows up to here do not hash to the signed tree head of"
        f" size {size}: the trail was rewritten"
    )


def test_a_saved_head_beyond_the_export_is_a_truncation(api, users, runner, tmp_path):
    make_trail(api.client, 3)
    files = saved(runner, tmp_path)
    make_trail(api.client, 2)  # rows the export, made before them, does not have
    anchored = flask_audit(runner, "anchor").stdout
    (tmp_path / "saved.txt").write_text(anchored)
    rows = export_lines(files)
    code, line = offline(runner, files, "--checkpoint", str(tmp_path / "saved.txt"))
    assert code == 1
    assert line.startswith(f"BROKEN at row {len(rows) + 1}: missing: the saved checkpoint"), line


def test_a_saved_head_the_trail_extends_verifies(api, users, runner, tmp_path):
    make_trail(api.client, 3)
    (tmp_path / "saved.txt").write_text(flask_audit(runner, "anchor").stdout)
    make_trail(api.client, 3)
    code, line = offline(
        runner, saved(runner, tmp_path), "--checkpoint", str(tmp_path / "saved.txt")
    )
    assert code == 0, line
    assert "extends the saved checkpoint" in line


def test_two_signed_heads_of_one_size_are_reported_as_a_split_view(api, users, runner, tmp_path):
    make_trail(api.client, 4)
    files = saved(runner, tmp_path)
    head = json.loads(files["heads"].read_text().splitlines()[-1])
    key = load_pem_private_key((tmp_path / KEY_FILE).read_bytes(), password=None)
    name = head["checkpoint"].split("\n")[0]
    other = signed_note(checkpoint_text(name, head["tree_size"], bytes(32)), name, key)
    with files["heads"].open("a") as heads:
        heads.write(json.dumps({"checkpoint": other}) + "\n")
    code, line = offline(runner, files)
    assert code == 1
    assert line.startswith(f"BROKEN at row {head['tree_size']}: split view"), line


def truncate_to(app, keep: int) -> None:
    """What someone with the database's owner role does to hide rows: delete them and the tree
    above them, and move the chain's head back, hashes and frontier agreeing."""
    with tampering(app) as connection:
        connection.execute(sa.text("INSERT INTO audit_purge_permit (id) VALUES (1)"))
        connection.execute(sa.text(f"DELETE FROM audit_log WHERE id > {keep}"))
        connection.execute(sa.text("DELETE FROM audit_tree_node"))
        connection.execute(sa.text("DELETE FROM audit_tree_tile"))
        connection.execute(sa.text("DELETE FROM audit_tree_head"))
        connection.execute(sa.text("DELETE FROM audit_purge_permit"))
        rows = stored_rows(connection)
        frontier, size = [], 0
        size, completed = merkle.append(frontier, 0, [merkle.leaf_hash(r["hash"]) for r in rows])
        connection.execute(
            sa.insert(TreeNode), [{"position": at, "hash": node.hex()} for at, node in completed]
        )
        tiles.build(connection, size)
        connection.execute(
            sa.update(AuditChain)
            .where(AuditChain.id == 1)
            .values(
                last_id=size,
                last_hash=rows[-1]["hash"],
                last_created_at=rows[-1]["created_at"],
                tree_frontier=merkle.pack(frontier),
                tree_head_at=None,
            )
        )


def purged_and_saved(api, runner, tmp_path) -> tuple[dict, int]:
    """A trail purged of its oldest rows, its head signed after the purge, saved; how many
    rows the purge removed."""
    aged_trail(api.client, old=4, new=3)
    result = purge(runner, "--yes")
    assert result.exit_code == 0, result.output
    make_trail(api.client, 2)
    assert flask_audit(runner, "anchor").exit_code == 0  # a head over every row left
    files = saved(runner, tmp_path)
    purged = json.loads(files["heads"].read_text().splitlines()[0])["purged"]
    return files, purged


def test_an_export_after_a_purge_verifies_from_the_tree_of_the_purged_rows(api, runner, tmp_path):
    files, purged = purged_and_saved(api, runner, tmp_path)
    first = export_lines(files)[0]["id"]
    assert first == purged + 1 > 4
    code, line = offline(runner, files)
    assert code == 0, line
    rows = len(export_lines(files))
    heads = r"[1-9]\d* signed tree heads? matched \(the largest of size \d+\)"
    assert re.fullmatch(f"intact: {rows} rows after the purge of rows 1-{purged}, {heads}", line), (
        line
    )


def test_purged_rows_tree_hashes_that_no_signed_head_vouches_for_are_named(api, runner, tmp_path):
    files, purged = purged_and_saved(api, runner, tmp_path)
    lines = files["heads"].read_text().splitlines()
    start = json.loads(lines[0])
    start["frontier"][0] = "00" * 32
    files["heads"].write_text("\n".join([json.dumps(start), *lines[1:]]) + "\n")
    code, line = offline(runner, files)
    assert code == 1
    assert "do not hash to the signed tree head" in line, line
