"""A `flask` command, or the boot, on a database it cannot use: one line that says what is wrong
and what to do, exit 1, and no traceback (issue "A newcomer's first hour", item 3). Each test
runs the real `flask` command (or `python -m backend.boot`) as a process.
"""

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

import config
from backend import create_app, database_state
from tests.conftest import make_settings, owner_url
from tests.serving import CLI_TIMEOUT, flask, free_port, server_environment

# Every command of the service, with the arguments it needs to get as far as the database.
COMMANDS = [
    ("db upgrade", ()),
    ("users create", ("bob", "--password-stdin")),
    ("users ensure-admin", ()),
    ("users list", ()),
    ("users set-password", ("alice", "--password-stdin")),
    ("users disable", ("alice",)),
    ("users enable", ("alice",)),
    ("audit verify", ()),
    ("audit anchor", ()),
    ("audit export", ()),
    ("audit purge", ("--before", "2020-01-01", "--yes")),
    ("audit replay", ()),
    ("audit keys", ()),
    ("audit heads", ()),
    ("audit tail", ()),
    ("audit hold add", ("case-1", "--reason", "litigation")),
    ("audit hold list", ()),
    ("audit hold release", ("case-1",)),
    ("audit maintain", ()),
]
# Commands that need a migrated database (`db upgrade` is the cure, not a victim).
NEED_SCHEMA = [command for command in COMMANDS if not command[0].startswith("db ")]


def command_line(command: tuple[str, tuple]) -> list[str]:
    return [*command[0].split(), *command[1]]


def environment(database_url: str, tmp_path) -> dict:
    return server_environment(database_url, tmp_path) | {"DATABASE_ADMIN_URL": database_url}


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    """The command exited 1 with one line on standard error, holding each of `expected`."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    [line] = done.stderr.strip().splitlines()
    for part in expected:
        assert part in line, line
    return line


def leaf_commands(group, path: str = "") -> set[str]:
    """The name of every command under `group` (click groups nest)."""
    found = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= leaf_commands(command, f"{path}{name} ")
        else:
            found.add(f"{path}{name}")
    return found


def test_the_table_names_every_command_of_the_service(tmp_path):
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'a.db'}", tmp_path))
    ours = {name for name in leaf_commands(app.cli) if not name.startswith("db ")}
    # `audit relay` reads AUDIT_SINKS_FILE first, and without one says so in one line
    # (tests/test_relay_config.py); with sinks, the database's state is its next check.
    assert ours - {"audit relay"} == {name for name, _ in NEED_SCHEMA}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_a_command_on_an_unreachable_postgresql_says_so_in_one_line(command, tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://audit:secret-password@127.0.0.1:{port}/audit"
    done = flask(environment(url, tmp_path), *command_line(command), stdin="a-long-password\n")
    line = assert_one_line(done, f"cannot reach the database at 127.0.0.1:{port}", "refused")
    assert "secret-password" not in line


@pytest.mark.parametrize("command", [COMMANDS[0], COMMANDS[3]], ids=lambda command: command[0])
def test_a_command_on_a_sqlite_file_it_cannot_open_says_so_in_one_line(command, tmp_path):
    path = tmp_path / "no-such-folder" / "audit.db"
    done = flask(environment(f"sqlite:///{path}", tmp_path), *command_line(command))
    assert_one_line(done, f"cannot reach the database at {path}", "unable to open")


@pytest.mark.parametrize("command", NEED_SCHEMA, ids=lambda command: command[0])
def test_a_command_on_a_sqlite_database_never_migrated_says_run_upgrade(command, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done = flask(environment(url, tmp_path), *command_line(command), stdin="a-long-password\n")
    assert_one_line(done, "has no schema yet", "run `flask db upgrade`")


@pytest.fixture
def empty_postgresql_schema(postgresql_url):
    """An empty schema of the test PostgreSQL database, and the owner's URL that uses it."""
    owner = config.database_url_for_sqlalchemy(owner_url(postgresql_url))
    engine = sa.create_engine(owner)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS never_migrated CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA never_migrated"))
    yield owner + "?options=-csearch_path%3Dnever_migrated"
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA never_migrated CASCADE"))
    engine.dispose()


@pytest.mark.parametrize(
    "command", [NEED_SCHEMA[0], NEED_SCHEMA[2]], ids=lambda command: command[0]
)
def test_a_command_on_a_postgresql_database_never_migrated_says_run_upgrade(
    command, empty_postgresql_schema, tmp_path
):
    done = flask(
        environment(empty_postgresql_schema, tmp_path),
        *command_line(command),
        stdin="pw-pw-pw-pw\n",
    )
    assert_one_line(done, "has no schema yet", "run `flask db upgrade`")


def test_a_command_on_a_schema_behind_the_code_names_both_migrations(tmp_path):
    env = environment(f"sqlite:///{tmp_path / 'old.db'}", tmp_path)
    assert flask(env, "db", "upgrade", "0005").returncode == 0
    done = flask(env, "audit", "verify")
    assert_one_line(done, "is at migration 0005, not the latest", "run `flask db upgrade`")


def test_a_data_error_on_a_schema_behind_the_code_is_not_said_to_be_the_schema(tmp_path):
    # A migration that fails on the data leaves the database between migrations: the line
    # "run `flask db upgrade`" would hide the error of the upgrade that just failed.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert flask(environment(url, tmp_path), "db", "upgrade", "0005").returncode == 0
    app = create_app(make_settings(url, tmp_path))
    engine = sa.create_engine(url)
    insert = sa.text(
        "INSERT INTO users (id, username, password_hash, is_admin, created_at)"
        " VALUES (1, 'alice', 'x', false, '2026-01-01')"
    )
    with engine.connect() as connection, pytest.raises(sa.exc.IntegrityError) as duplicate:
        connection.execute(insert)
        connection.execute(insert)
    with engine.connect() as connection, pytest.raises(sa.exc.OperationalError) as missing:
        connection.execute(sa.text("SELECT * FROM audit_tree_node"))
    engine.dispose()
    assert database_state.problem(app, duplicate.value) is None  # its traceback, as any bug
    assert "is at migration 0005, not the latest" in database_state.problem(app, missing.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://root:secret-password@db/audit", "it is a mysql:// URL"),
        ("postgresql://audit:secret-password@db:port/audit", "not a well-formed URL"),
        ("audit.db", "it is not a URL"),
    ],
)
def test_a_bad_database_url_is_one_configuration_error_line(url, says, tmp_path):
    env = server_environment(url, tmp_path)
    done = flask(env, "audit", "verify")
    assert done.returncode == config.APP_LOAD_ERROR
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("configuration error: DATABASE_URL ")
    assert "postgresql://USER:PASSWORD@HOST:5432/NAME" in line  # an example to follow
    assert says in line and "secret-password" not in line
    assert "No such command" not in done.stderr


def boot(env: dict) -> subprocess.CompletedProcess:
    """`make run`'s boot as a process; it must stop by itself here (it never reaches gunicorn)."""
    return subprocess.run(
        [sys.executable, "-m", "backend.boot", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=config.ROOT,
        env=env | {"PATH": os.environ.get("PATH", os.defpath)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_the_boot_on_an_unreachable_database_says_so_in_one_line(tmp_path):
    port = free_port()
    done = boot(environment(f"postgresql://audit:pw@127.0.0.1:{port}/audit", tmp_path))
    assert_one_line(done, f"cannot reach the database at 127.0.0.1:{port}")


def test_the_boot_with_a_bad_database_url_says_so_in_one_line(tmp_path):
    done = boot(server_environment("mysql://x", tmp_path))
    assert done.returncode == config.APP_LOAD_ERROR
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("configuration error: DATABASE_URL")
