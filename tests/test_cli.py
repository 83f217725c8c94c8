"""`flask users create` and `flask users ensure-admin`."""

import os
import pty
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

import config
from backend import create_app, dispose_engines
from backend.extensions import db
from backend.models import User
from tests.conftest import ALICE, Api, basic, make_settings
from tests.helpers import stored_users
from tests.serving import BIN

PASSWORD = "carol-password-1"


def can_log_in(app, username: str, password: str) -> bool:
    return app.test_client().post("/login", headers=basic(username, password)).status_code == 200


def run_create(runner, *args: str, input: str = PASSWORD + "\n"):
    """`flask users create ARGS...`, with `input` on standard input."""
    return runner.invoke(args=["users", "create", *args], input=input)


def run_ensure_admin(runner):
    """`flask users ensure-admin`."""
    return runner.invoke(args=["users", "ensure-admin"])


@pytest.fixture
def app_with_admin_settings(database_url, tmp_path):
    """An app whose settings name an admin: ADMIN_USERNAME=root, ADMIN_PASSWORD=..."""
    app = create_app(
        make_settings(
            database_url, tmp_path, ADMIN_USERNAME="root", ADMIN_PASSWORD="root-password-1"
        )
    )
    yield app
    dispose_engines(app)


def test_create_reads_the_password_from_stdin(app, runner):
    result = run_create(runner, "carol", "--password-stdin")
    assert result.exit_code == 0, result.output
    assert result.output == "created user carol\n"
    assert stored_users(app) == {"carol": False}
    assert can_log_in(app, "carol", PASSWORD)


def test_create_with_admin_makes_an_admin(app, runner):
    result = run_create(runner, "carol", "--admin", "--password-stdin")
    assert result.exit_code == 0, result.output
    assert result.output == "created admin carol\n"
    assert stored_users(app) == {"carol": True}


def test_create_prompts_twice_for_a_hidden_password(app, runner):
    result = run_create(runner, "carol", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("Password") == 1 and "Repeat for confirmation" in result.output
    assert PASSWORD not in result.output
    assert can_log_in(app, "carol", PASSWORD)


def test_create_asks_again_when_the_two_passwords_differ(app, runner):
    result = run_create(
        runner, "carol", input=f"first-password-1\nother-password-2\n{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert result.output.count("Repeat for confirmation") == 2
    assert can_log_in(app, "carol", PASSWORD)
    assert not can_log_in(app, "carol", "first-password-1")


def test_create_of_a_taken_name_exits_1_saying_so(app, api, runner):
    api.create_user(*ALICE)
    result = run_create(runner, "alice", "--admin", "--password-stdin")
    assert result.exit_code == 1
    assert "'alice' is taken" in result.output
    assert stored_users(app) == {"alice": False}
    assert can_log_in(app, *ALICE)


@pytest.mark.parametrize("name", ["bad name", "carol\n", "_carol", "c" * 65])
def test_create_of_an_invalid_name_fails_naming_the_field(app, runner, name):
    result = run_create(runner, name, "--password-stdin")
    assert result.exit_code == 1, result.output
    assert "username" in result.output
    assert stored_users(app) == {}


def test_create_with_a_short_password_fails_naming_the_field(app, runner):
    result = run_create(runner, "carol", "--password-stdin", input="short\n")
    assert result.exit_code == 1, result.output
    assert "password" in result.output
    assert stored_users(app) == {}


def generated_password_file(app) -> Path:
    return Path(app.instance_path) / "initial-admin-password"


def test_ensure_admin_on_an_empty_database_keeps_the_password_in_an_owner_only_file(app, runner):
    result = run_ensure_admin(runner)
    assert result.exit_code == 0, result.output
    path = generated_password_file(app)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_users(app) == {"admin": True}
    assert can_log_in(app, "admin", path.read_text().strip())


def test_ensure_admin_off_a_terminal_says_where_the_password_is_and_never_prints_it(app, runner):
    """Standard output is the service's log stream (`make run`, `docker logs`)."""
    result = run_ensure_admin(runner)
    path = generated_password_file(app)
    assert result.output == (
        f"created admin admin; its password is in {path} (readable by its owner only)\n"
    )
    assert path.read_text().strip() not in result.output


def test_ensure_admin_on_a_terminal_also_shows_the_password(sqlite_template, tmp_path):
    database = tmp_path / "audit.db"
    shutil.copy(sqlite_template, database)
    output = ensure_admin_on_a_terminal(f"sqlite:///{database}", tmp_path)
    password = (tmp_path / "initial-admin-password").read_text().strip()
    assert f"created admin admin with password {password} " in output


def ensure_admin_on_a_terminal(database_url: str, instance_path: Path) -> str:
    """`flask users ensure-admin` with its standard output on a pseudo-terminal; what it
    printed there."""
    controller, terminal = pty.openpty()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(instance_path),
        "SECRET_KEY": "test-secret-key",
    }
    try:
        done = subprocess.run(
            [BIN / "flask", "users", "ensure-admin"],
            cwd=config.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(terminal)
    assert done.returncode == 0, done.stderr
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return output.decode()


def test_ensure_admin_writes_a_new_random_password_each_time(app, runner):
    run_ensure_admin(runner)
    first = generated_password_file(app).read_text()
    with app.app_context():
        db.session.execute(sa.delete(User))
        db.session.commit()
    run_ensure_admin(runner)
    assert generated_password_file(app).read_text() != first
    assert stat.S_IMODE(generated_password_file(app).stat().st_mode) == 0o600


def test_ensure_admin_does_nothing_when_users_exist(app, api, runner):
    api.create_user(*ALICE)
    result = run_ensure_admin(runner)
    assert (result.exit_code, result.output) == (0, "")
    assert stored_users(app) == {"alice": False}


def test_ensure_admin_creates_the_configured_admin(app_with_admin_settings):
    result = run_ensure_admin(app_with_admin_settings.test_cli_runner())
    assert (result.exit_code, result.output) == (0, "created admin root\n")
    assert stored_users(app_with_admin_settings) == {"root": True}
    assert can_log_in(app_with_admin_settings, "root", "root-password-1")


def test_ensure_admin_creates_the_configured_admin_once(app_with_admin_settings):
    runner = app_with_admin_settings.test_cli_runner()
    run_ensure_admin(runner)
    result = run_ensure_admin(runner)
    assert (result.exit_code, result.output) == (0, "")
    assert stored_users(app_with_admin_settings) == {"root": True}


def test_ensure_admin_creates_the_configured_admin_beside_other_users(app_with_admin_settings):
    Api(app_with_admin_settings, app_with_admin_settings.test_client()).create_user(*ALICE)
    assert run_ensure_admin(app_with_admin_settings.test_cli_runner()).exit_code == 0
    assert stored_users(app_with_admin_settings) == {"alice": False, "root": True}


def test_ensure_admin_refuses_credentials_the_api_would_refuse(database_url, tmp_path):
    app = create_app(
        make_settings(database_url, tmp_path, ADMIN_USERNAME="bad name!", ADMIN_PASSWORD="x")
    )
    try:
        result = run_ensure_admin(app.test_cli_runner())
        assert result.exit_code == 1
        assert "username:" in result.output and "password:" in result.output
        assert stored_users(app) == {}
    finally:
        dispose_engines(app)
