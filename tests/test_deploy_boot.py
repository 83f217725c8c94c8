"""`docker compose up`'s app container, run on this machine against a real PostgreSQL.

The app service's command and environment are read from docker-compose.yml (interpolated from
an .env made of .env.example plus the secrets), over the image's own ENV, and run as they are
but for what only Docker provides: the host `db` is the test PostgreSQL's host and port, the
container's port 8000 is a free loopback port (through GUNICORN_CMD_ARGS in that .env), and
the image's paths (/opt/venv, the instance volume) are the venv and a temporary folder.

Each test starts from an empty database (its schema dropped, as CI's role cannot create a
database); the module leaves it migrated again for the tests that follow.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from backend.gunicorn_conf import graceful_timeout
from tests.conftest import drop_schema, migrate_to_head, owner_url
from tests.deployment import (
    compose,
    env_example,
    healthcheck_command,
    image_environment,
    interpolate,
    run_shell,
)
from tests.helpers import latest_migration
from tests.serving import (
    BIN,
    Client,
    access_log,
    free_port,
    readme_session,
    start,
    stop,
    wait_until_ready,
)

pytestmark = pytest.mark.serving

ADMIN = ("admin", "compose-admin-password-1")
# What an operator puts in .env next to .env.example's values (the database's part comes from
# TEST_DATABASE_URL). Two workers: the default count is tested in test_deploy_gunicorn.py.
OPERATOR_ENV = {
    "SECRET_KEY": "compose-test-secret-key",
    "AUDIT_SIGNING_KEY": "compose-key",
    "ADMIN_USERNAME": ADMIN[0],
    "ADMIN_PASSWORD": ADMIN[1],
    "GUNICORN_WORKERS": "2",
}
CONTAINER_PORT = "8000"
DEADLINE = 30.0


def query(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def boot_database(postgresql_url, tmp_path_factory):
    """TEST_DATABASE_URL (fails under CI without it); migrated again when the module is done."""
    yield postgresql_url
    drop_schema(postgresql_url)
    migrate_to_head(postgresql_url, tmp_path_factory.mktemp("boot-restore"))


@pytest.fixture
def empty_database(boot_database):
    drop_schema(boot_database)
    return boot_database


def compose_app(
    database_url: str, instance: Path, port: int, **dotenv: str
) -> tuple[list[str], dict]:
    """The app service's command and environment, as they would run in the container, with
    `dotenv` added to the operator's .env."""
    url, owner = sa.make_url(database_url), sa.make_url(owner_url(database_url))
    variables = (
        env_example()
        | OPERATOR_ENV
        | {
            "POSTGRES_USER": owner.username,
            "POSTGRES_PASSWORD": owner.password,
            "POSTGRES_APP_USER": url.username,
            "POSTGRES_APP_PASSWORD": url.password,
            "POSTGRES_DB": url.database,
            "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
        }
        | dotenv
    )
    service = compose()["services"]["app"]
    environment = {
        name: interpolate(str(value), variables) for name, value in service["environment"].items()
    }
    # Docker's network resolves `db`; here the database is TEST_DATABASE_URL's server.
    for name in ("DATABASE_URL", "DATABASE_ADMIN_URL"):
        assert "@db:5432/" in environment[name]
        environment[name] = environment[name].replace(
            "@db:5432/", f"@{url.host}:{url.port or 5432}/"
        )
    image = image_environment()
    assert image["PATH"].startswith("/opt/venv/bin:")
    env = (
        image
        | {
            "PATH": f"{BIN}:{os.defpath}",
            "INSTANCE_PATH": str(instance),  # the `instance` volume
            "HOME": str(instance / "home"),  # the app user's home; nothing may be written there
        }
        | environment
    )
    command = [sys.executable if part == "python" else part for part in service["command"]]
    return command, env


@dataclass
class Booted:
    process: subprocess.Popen
    client: Client
    log: Path
    port: int

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def boot(empty_database, tmp_path):
    """Start the app container's command (as many as asked); all are stopped at the end."""
    booted: list[Booted] = []

    def run(name: str = "app", wait: bool = True, **dotenv: str) -> Booted:
        port = free_port()
        instance = tmp_path / name
        (instance / "home").mkdir(parents=True)
        command, env = compose_app(empty_database, instance, port, **dotenv)
        log = tmp_path / f"{name}.log"
        app = Booted(start(command, env, log), Client(f"http://127.0.0.1:{port}"), log, port)
        booted.append(app)
        if wait:
            wait_until_ready(app.client, app.process, log)
        return app

    yield run
    for app in booted:
        stop(app.process)


def stopped(app: Booted) -> int:
    """SIGTERM, as `docker stop` sends it; the exit code, within the grace period."""
    app.process.send_signal(signal.SIGTERM)
    return app.process.wait(timeout=graceful_timeout + 10)


def users(url: str) -> list[tuple]:
    return query(url, "SELECT username, is_admin FROM users ORDER BY id")


# --- the first boot ----------------------------------------------------------------------------
def test_the_first_boot_migrates_the_empty_database_and_creates_the_admin(boot, empty_database):
    app = boot()
    output = app.output()
    assert "Running upgrade  -> 0001" in output
    assert f"-> {latest_migration()}, " in output
    assert f"created admin {ADMIN[0]}\n" in output
    assert users(empty_database) == [(ADMIN[0], True)]
    ready = app.client.get("/readyz").body
    assert (ready["status"], ready["migration"]) == ("ready", latest_migration())


def test_the_boot_becomes_gunicorn_itself(boot):
    """exec, not a child: the container's stop signal reaches gunicorn's master directly."""
    app = boot()
    assert f"Listening at: http://127.0.0.1:{app.port} ({app.process.pid})" in app.output()
    assert stopped(app) == 0
    assert "Handling signal: term" in app.output()


def test_gunicorn_writes_nothing_to_the_users_home(boot, tmp_path):
    app = boot()
    assert stopped(app) == 0
    assert list((tmp_path / "app" / "home").iterdir()) == []
    assert "control socket" not in app.output().lower()


def test_the_booted_service_answers_the_readme_session(boot):
    app = boot()
    readme_session(app.client, app.log, ADMIN)


def test_the_image_healthcheck_passes_while_the_service_lives(boot):
    app = boot()
    command = healthcheck_command()
    command = [
        sys.executable
        if part == "python"
        else part.replace(f"127.0.0.1:{CONTAINER_PORT}/", f"127.0.0.1:{app.port}/")
        for part in command
    ]
    env = {"PATH": os.defpath}
    assert subprocess.run(command, env=env, capture_output=True, timeout=10).returncode == 0
    assert stopped(app) == 0
    assert subprocess.run(command, env=env, capture_output=True, timeout=10).returncode != 0


def environment_of(pid: int) -> dict[str, str]:
    """A running process's environment, as the system shows it."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if entry)


def test_gunicorn_is_not_given_the_owners_url(boot):
    """The boot migrated as the owner; what serves requests must not be able to act as it."""
    app = boot()
    assert app.client.get("/readyz").status == 200
    assert environment_of(app.process.pid)["DATABASE_ADMIN_URL"] == ""


def test_the_booted_service_connects_as_the_apps_role(boot, empty_database):
    app = boot()
    assert app.client.post("/login", basic=ADMIN).status == 200
    roles = query(
        owner_url(empty_database),
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname ="
        " current_database() AND pid <> pg_backend_pid()",
    )
    assert roles == [(sa.make_url(empty_database).username,)]


# --- booting again, and together ---------------------------------------------------------------
def test_a_second_boot_migrates_nothing_and_creates_no_second_admin(boot, empty_database):
    first = boot("first")
    assert stopped(first) == 0
    second = boot("second")
    assert "Running upgrade" not in second.output()
    assert "created admin" not in second.output()
    assert users(empty_database) == [(ADMIN[0], True)]
    assert second.client.get("/readyz").status == 200


def test_boots_started_together_migrate_once_and_create_one_admin(boot, empty_database):
    """Scaling out: several app containers start against one PostgreSQL at the same moment."""
    apps = [boot(f"app{n}", wait=False) for n in range(3)]
    for app in apps:
        wait_until_ready(app.client, app.process, app.log)
    outputs = [app.output() for app in apps]
    assert sum("Running upgrade  -> 0001" in output for output in outputs) == 1
    assert sum("created admin" in output for output in outputs) == 1
    assert users(empty_database) == [(ADMIN[0], True)]


# --- stopping ----------------------------------------------------------------------------------
class SlowLogin:
    """A JSON login whose body arrives in two parts, so that it is in flight for as long as the
    test likes."""

    def __init__(self, port: int):
        body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]}).encode()
        self.rest = body[10:]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:10])
        )

    def finish(self) -> tuple[int, str]:
        """Send the rest; the status and X-Request-ID of the answer."""
        self.sock.sendall(self.rest)
        response = http.client.HTTPResponse(self.sock)
        try:
            response.begin()
            json.loads(response.read())
            return response.status, response.getheader("X-Request-ID")
        finally:
            response.close()
            self.sock.close()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE:.0f} s")
        time.sleep(0.1)


def test_sigterm_lets_in_flight_requests_finish_with_their_audit_rows(boot, empty_database):
    # A gevent worker serves all three at once: each of them is in a view.
    app = boot()
    logins = [SlowLogin(app.port) for _ in range(3)]
    try:
        time.sleep(1.0)  # the workers have read the headers and wait in the view for the body
        app.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "Handling signal: term" in app.output(), "graceful stop")
        time.sleep(1.5)  # the workers' loops (1 s) have seen it: they accept nothing new
        assert app.process.poll() is None  # the master waits for the busy workers
        answers = [login.finish() for login in logins]
    finally:
        for login in logins:
            login.sock.close()
    assert [status for status, _ in answers] == [200] * len(logins)
    assert app.process.wait(timeout=graceful_timeout + 10) == 0
    assert "Worker exiting" in app.output()

    request_ids = [request_id for _, request_id in answers]
    rows = query(
        empty_database,
        "SELECT request_id, event, status FROM audit_log WHERE request_id = ANY(:ids)",
        ids=request_ids,
    )
    assert sorted(rows) == sorted((rid, "login.success", 200) for rid in request_ids)
    # Each was handled from before the SIGTERM until after the 2.5 s above.
    durations = {entry["request_id"]: entry["duration_ms"] for entry in access_log(app.log)}
    assert all(durations[request_id] >= 2500 for request_id in request_ids), durations


# --- the database ------------------------------------------------------------------------------
def test_workers_recover_when_the_database_cuts_their_connections(boot, empty_database):
    """A database restart, as the workers see it: every connection they hold is cut."""
    app = boot()
    token = app.client.post("/login", basic=ADMIN).body["token"]
    for _ in range(20):  # every worker has pooled connections by now
        assert app.client.get("/v1/me", token=token).status == 200
    # With a timeout, pg_terminate_backend returns once the backend has exited (its socket
    # closed), not when it has only been told to: no request races the termination.
    [(cut,)] = query(
        empty_database,
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM"
        " pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    assert cut > 0
    statuses = [app.client.get("/v1/me", token=token).status for _ in range(20)]
    assert statuses == [200] * 20


def test_the_database_healthcheck_tells_up_from_down(boot_database):
    """The db service's pg_isready check, run against this PostgreSQL and a closed port."""
    url = sa.make_url(boot_database)
    kind, command = compose()["services"]["db"]["healthcheck"]["test"]
    command = interpolate(command, {})  # compose's pass: $$ becomes $ for the container's shell
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "POSTGRES_USER": url.username,
        "POSTGRES_DB": url.database,
        "PGPASSWORD": url.password,
    }
    assert url.host in ("127.0.0.1", "localhost")
    up = run_shell(command, env | {"PGPORT": str(url.port or 5432)})
    assert up.returncode == 0, up.stdout + up.stderr
    assert run_shell(command, env | {"PGPORT": str(free_port())}).returncode != 0
