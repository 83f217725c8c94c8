"""The backup runbook of docs/operations.md ("Backups"), step by step, on real PostgreSQL:
`pg_dump` of the trail's database, `pg_restore` into an empty database of another server (a
private cluster), `flask db upgrade` there, then `flask audit verify --tree`, and new rows;
and what an archive of the trail alone holds."""

import subprocess

import psycopg
import pytest
from flask_migrate import upgrade

from backend import create_app, dispose_engines
from bench.database import libpq_url
from tests.conftest import make_settings, owner_url, postgresql_only
from tests.helpers import CHECKPOINT_EVERY_3, make_trail, verify_line
from tests.pgcluster import find_bindir, private_cluster, require_bindir

pytestmark = [postgresql_only, CHECKPOINT_EVERY_3]
APP_ROLE = ("audit_app", "audit-app-secret")


@pytest.fixture(scope="module")
def other_server():
    """The server a backup is restored on: a private cluster, with the app's role."""
    with private_cluster() as cluster:
        cluster.execute(f"CREATE ROLE {APP_ROLE[0]} LOGIN PASSWORD '{APP_ROLE[1]}'")
        yield cluster


def tool(name: str, *args: str) -> None:
    """Run one of PostgreSQL's client tools (the server's version), failing on any error."""
    require_bindir()
    completed = subprocess.run(
        [str(find_bindir() / name), *args], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr


def restored(database_url: str, server, name: str, tmp_path):
    """The runbook: dump `database_url`'s database as its owner, restore it into the empty
    database `name` on `server` (owned by a role of the same name), upgrade it as its owner;
    the restored service's app, serving as the app's role."""
    dump = tmp_path / "audit.dump"
    tool("pg_dump", "--format=custom", f"--file={dump}", libpq_url(owner_url(database_url)))
    new_owner_url = server.create_database(name, name, f"{name}-secret")
    tool(
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        f"--dbname={new_owner_url}",
        str(dump),
    )
    app_url = f"postgresql://{APP_ROLE[0]}:{APP_ROLE[1]}@127.0.0.1:{server.port}/{name}"
    app = create_app(
        make_settings(
            app_url, tmp_path, DATABASE_ADMIN_URL=new_owner_url, AUDIT_CHECKPOINT_EVERY="3"
        )
    )
    with app.app_context():
        upgrade()  # gives the app's role its privileges on the new server (backend/roles.py)
    return app


@pytest.fixture
def restore(database_url, other_server, tmp_path, request):
    """Restore the test's database now: the restored app (disposed at the end)."""
    apps = []

    def restore_now():
        name = f"restored_{len(apps)}_{request.node.name[:20].lower()}"
        apps.append(restored(database_url, other_server, name, tmp_path))
        return apps[-1]

    yield restore_now
    for app in apps:
        dispose_engines(app)


def test_a_restored_backup_verifies_intact(client, restore):
    make_trail(client, 7)
    app = restore()
    assert verify_line(app.test_cli_runner(), "--tree") == (
        0,
        "intact: 7 rows (rows 1-7), signed up to row 6; the tree's stored hashes and tiles too",
    )


def test_a_restored_trail_accepts_new_rows_on_its_chain(client, restore):
    make_trail(client, 7)
    app = restore()
    make_trail(app.test_client(), 3)
    assert verify_line(app.test_cli_runner(), "--tree") == (
        0,
        "intact: 10 rows (rows 1-10), signed up to row 9; the tree's stored hashes and tiles too",
    )


def archived_rows(dump) -> dict[str, int]:
    """The rows of each table in the custom-format archive `dump`, as pg_restore writes them."""
    require_bindir()
    script = subprocess.run(
        [str(find_bindir() / "pg_restore"), "--data-only", "--file=-", str(dump)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows, table = {}, None
    for line in script.splitlines():
        if line.startswith("COPY "):
            table = line.split()[1].removeprefix("public.")
            rows[table] = 0
        elif line == "\\.":
            table = None
        elif table is not None:
            rows[table] += 1
    return rows


def test_an_archive_of_the_trail_alone_holds_every_row_and_the_tree(client, database_url, tmp_path):
    # docs/operations.md: `--table='audit_*'`. With `--table=audit_log` alone, PostgreSQL's
    # pg_dump takes the partitioned table without its monthly partitions: not one row.
    make_trail(client, 7)
    dump = tmp_path / "trail.dump"
    source = libpq_url(owner_url(database_url))
    tool("pg_dump", "--format=custom", "--table=audit_*", f"--file={dump}", source)
    with psycopg.connect(source) as connection:
        [[rows]] = connection.execute("SELECT count(*) FROM audit_log").fetchall()
    archived = archived_rows(dump)
    months = {name: n for name, n in archived.items() if name.startswith("audit_log_")}
    assert sum(months.values()) == rows == 7, archived
    tables = ("audit_chain", "audit_checkpoint", "audit_tree_node", "audit_tree_tile")
    assert {*tables, "audit_tree_head", "audit_signing_key"} <= archived.keys()
    assert all(archived[name] for name in ("audit_chain", "audit_tree_head", "audit_signing_key"))
