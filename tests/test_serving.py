"""The service served for real: `make run`'s three steps, then the README's curl session.

`flask db upgrade`, `flask users ensure-admin` and gunicorn with two workers run as
subprocesses of the venv, against each database of the `database_url` fixture; the session
talks to it over a loopback socket with urllib, and then reads its own steps back from
/v1/logs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import pytest

import config

pytestmark = pytest.mark.serving

BIN = Path(sys.executable).parent
ADMIN = ("admin", "serving-admin-password-1")
READY_DEADLINE = 20.0
STOP_TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    headers: dict
    body: dict


class Client:
    """A minimal HTTP client for the session: JSON in, JSON out, errors are replies too."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        # No proxies: a loopback server must be reached directly whatever the environment says.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, *, token: str | None = None,
             basic: tuple[str, str] | None = None, json_body: dict | None = None) -> Reply:
        url = path if path.startswith("http") else self.base_url + path
        request = urllib.request.Request(url, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if basic is not None:
            credentials = b64encode(":".join(basic).encode()).decode()
            request.add_header("Authorization", f"Basic {credentials}")
        if json_body is not None:
            request.data = json.dumps(json_body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=10) as response:
                return Reply(response.status, dict(response.headers), json.load(response))
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, dict(error.headers), json.load(error))

    def get(self, path: str, **kwargs) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Reply:
        return self.call("POST", path, **kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(database_url: str, instance_path: Path) -> dict:
    """What `make run` would see, with every setting the session depends on pinned."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "development",
        "INSTANCE_PATH": str(instance_path),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "serving-test-secret-key",
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        # Pinned so that a developer's .env (read too, but never overriding) cannot change them.
        "TOKEN_TTL": "3600",
        "TRUSTED_PROXY_HOPS": "0",
        # gunicorn >= 25 opens a control socket here (default: ~/.gunicorn); keep it ours.
        "XDG_RUNTIME_DIR": str(instance_path),
    }


def flask_command(*args: str, env: dict) -> str:
    """Run `flask ARGS` from the repository root, as `make run` does; return its output."""
    done = subprocess.run([BIN / "flask", *args], cwd=config.ROOT, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"flask {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def wait_until_ready(client: Client, server: subprocess.Popen, log: Path) -> None:
    """Poll /readyz until it answers 200, the deadline passes or gunicorn exits."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.returncode}:\n{log.read_text()}")
        try:
            if client.get("/readyz").status == 200:
                return
        except (OSError, ValueError):  # not listening yet, or cut off mid-answer
            pass
        time.sleep(0.2)
    pytest.fail(f"gunicorn was not ready within {READY_DEADLINE:.0f} s:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM (gunicorn stops its workers), wait, and only then kill the whole group."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    # The master's own session: a worker left behind by a killed master dies with it.
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def served(database_url, tmp_path):
    """A migrated database with its admin, served by gunicorn; yields (client, server log)."""
    env = server_environment(database_url, tmp_path)
    flask_command("db", "upgrade", env=env)
    assert flask_command("users", "ensure-admin", env=env) == f"created admin {ADMIN[0]}\n"
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [BIN / "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--access-logfile", "-", "wsgi:app"],
            cwd=config.ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = Client(f"http://127.0.0.1:{port}")
        wait_until_ready(client, server, log)
        yield client, log
    finally:
        stop(server)


def test_the_readme_session_works_and_leaves_its_trail(served):
    client, log = served

    # Log in with HTTP Basic, and once more with a JSON body.
    login = client.post("/login", basic=ADMIN)
    assert login.status == 200, login.body
    assert login.body["token_type"] == "Bearer"
    assert login.body["user"]["username"] == ADMIN[0] and login.body["user"]["is_admin"]
    token = login.body["token"]
    json_login = client.post("/login", json_body={"username": ADMIN[0], "password": ADMIN[1]})
    assert json_login.status == 200 and json_login.body["token"] != token

    me = client.get("/v1/me", token=token)
    assert me.status == 200
    assert me.body == login.body["user"]

    # Three INFO rows so far (two logins, /v1/me): two on the first page, one on the second.
    first = client.get("/v1/logs?level=INFO&limit=2", token=token)
    assert first.status == 200, first.body
    assert [row["request_id"] for row in first.body["items"]] == [
        me.headers["X-Request-ID"], json_login.headers["X-Request-ID"]]
    assert first.body["next"] is not None
    next_url, rel = first.headers["Link"].split("; ")
    assert rel == 'rel="next"'
    next_url = next_url.strip("<>")
    assert next_url.startswith(client.base_url + "/v1/logs?")
    assert f"after={first.body['next']}" in next_url
    second = client.get(next_url, token=token)
    assert second.status == 200, second.body
    assert [row["request_id"] for row in second.body["items"]] == [login.headers["X-Request-ID"]]
    assert second.body["next"] is None and "Link" not in second.headers

    failed = client.post("/login", basic=(ADMIN[0], "not-the-password"))
    assert failed.status == 401
    assert failed.headers["WWW-Authenticate"].startswith("Basic")
    failures = client.get("/v1/logs?event=login.failure", token=token)
    [failure] = failures.body["items"]
    assert (failure["user"], failure["level"], failure["track"], failure["status"]) == (
        ADMIN[0], "WARNING", "invalid password", 401)

    logout = client.get("/logout", token=token)
    assert logout.status == 200 and logout.body == {"message": "logged out"}
    refused = client.get("/v1/me", token=token)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    # Every step left its row, under the request id its response carried.
    trail = {row["request_id"]: row
             for row in client.get("/v1/logs?limit=1000",
                                   token=json_login.body["token"]).body["items"]}
    expected = [
        (login, "auth", "login.success", "INFO", ADMIN[0], "/login"),
        (json_login, "auth", "login.success", "INFO", ADMIN[0], "/login"),
        (me, "v1", "api.request", "INFO", ADMIN[0], "/v1/me"),
        (first, "v1", "api.request", "INFO", ADMIN[0], "/v1/logs"),
        (second, "v1", "api.request", "INFO", ADMIN[0], "/v1/logs"),
        (failed, "auth", "login.failure", "WARNING", ADMIN[0], "/login"),
        (failures, "v1", "api.request", "INFO", ADMIN[0], "/v1/logs"),
        (logout, "auth", "logout", "INFO", ADMIN[0], "/logout"),
        (refused, "v1", "api.request", "WARNING", None, "/v1/me"),
    ]
    for reply, source, event, level, user, path in expected:
        row = trail[reply.headers["X-Request-ID"]]
        assert (row["source"], row["event"], row["level"], row["user"], row["path"],
                row["status"], row["ip"]) == (source, event, level, user, path, reply.status,
                                              "127.0.0.1")

    # Neither the password nor a token reached the server's output (access log included).
    output = log.read_text()
    assert "GET /v1/me" in output
    for secret in (ADMIN[1], token, json_login.body["token"]):
        assert secret not in output



def test_production_without_its_secrets_stops_gunicorn_with_a_clear_message(tmp_path):
    env = {"PATH": os.environ.get("PATH", os.defpath), "APP_ENV": "production",
           "INSTANCE_PATH": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [BIN / "gunicorn", "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "wsgi:app"],
        cwd=config.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = server.communicate(timeout=READY_DEADLINE)
    finally:
        stop(server)
    assert server.returncode != 0
    assert "configuration error: APP_ENV=production needs DATABASE_URL" in output
