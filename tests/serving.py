"""Helpers of the tests that serve the app for real: start the boot, talk HTTP, stop it.

Every wait has a deadline, and `stop` leaves no process behind: SIGTERM first (gunicorn's
graceful stop), then SIGKILL to the whole process group.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import config
from tests.conftest import database_environment

BIN = Path(sys.executable).parent
READY_DEADLINE = 30.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful_timeout (30 s), and then some


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
             basic: tuple[str, str] | None = None, json_body: dict | None = None,
             headers: dict | None = None) -> Reply:
        url = path if path.startswith("http") else self.base_url + path
        request = urllib.request.Request(url, method=method, headers=headers or {})
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


def raw_exchange(base_url: str, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send `request` as it is on a new connection, read until the server closes it; return
    the status and the body. For what no HTTP client would send (two Content-Lengths, ...)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        try:
            while data := connection.recv(65536):
                received += data
        except ConnectionResetError:  # closed on a body it did not read: the answer came first
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_run_command(port: int) -> list[str]:
    """The command of the Makefile's `run` target, with its variables filled in."""
    recipe = (config.ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    [line] = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]
    line = line.replace("$(BIN)", str(BIN)).replace("$(PORT)", str(port))
    return shlex.split(line.removeprefix("exec "))


def start(command: list, env: dict, log: Path) -> subprocess.Popen:
    """Start `command` from the repository root in a session of its own, output to `log`."""
    with log.open("ab") as output:
        return subprocess.Popen(command, cwd=config.ROOT, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_ready(client: Client, server: subprocess.Popen, log: Path) -> None:
    """Poll /readyz until it answers 200, the deadline passes or the server exits."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if client.get("/readyz").status == 200:
                return
        except (OSError, ValueError):  # not listening yet, or cut off mid-answer
            pass
        time.sleep(0.2)
    pytest.fail(f"the server was not ready within {READY_DEADLINE:.0f} s:\n{log.read_text()}")


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


def access_log(log: Path) -> list[dict]:
    """The access log's entries: the lines of the server's output that are JSON objects."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def readme_session(client: Client, log: Path, admin: tuple[str, str]) -> None:
    """The README's curl session against a served, empty database with `admin`; every step
    must leave its audit row and its access-log line, and no secret may reach the output."""
    # Log in with HTTP Basic, and once more with a JSON body.
    login = client.post("/login", basic=admin)
    assert login.status == 200, login.body
    assert login.body["token_type"] == "Bearer"
    assert login.body["user"]["username"] == admin[0] and login.body["user"]["is_admin"]
    token = login.body["token"]
    json_login = client.post("/login", json_body={"username": admin[0], "password": admin[1]})
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

    failed = client.post("/login", basic=(admin[0], "not-the-password"))
    assert failed.status == 401
    assert failed.headers["WWW-Authenticate"].startswith("Basic")
    failures = client.get("/v1/logs?event=login.failure", token=token)
    [failure] = failures.body["items"]
    assert (failure["user"], failure["level"], failure["track"], failure["status"]) == (
        admin[0], "WARNING", "invalid password", 401)

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
        (login, "auth", "login.success", "INFO", admin[0], "/login"),
        (json_login, "auth", "login.success", "INFO", admin[0], "/login"),
        (me, "v1", "api.request", "INFO", admin[0], "/v1/me"),
        (first, "v1", "api.request", "INFO", admin[0], "/v1/logs"),
        (second, "v1", "api.request", "INFO", admin[0], "/v1/logs"),
        (failed, "auth", "login.failure", "WARNING", admin[0], "/login"),
        (failures, "v1", "api.request", "INFO", admin[0], "/v1/logs"),
        (logout, "auth", "logout", "INFO", admin[0], "/logout"),
        (refused, "v1", "api.request", "WARNING", None, "/v1/me"),
    ]
    for reply, source, event, level, user, path in expected:
        row = trail[reply.headers["X-Request-ID"]]
        assert (row["source"], row["event"], row["level"], row["user"], row["path"],
                row["status"], row["ip"]) == (source, event, level, user, path, reply.status,
                                              "127.0.0.1")

    # ... and its access-log line, under the same request id, from the same address.
    logged = {entry["request_id"]: entry for entry in access_log(log)}
    for reply, *_, path in expected:
        entry = logged[reply.headers["X-Request-ID"]]
        assert (entry["path"], entry["status"], entry["client"]) == (path, reply.status,
                                                                     "127.0.0.1")

    # Neither the password nor a token reached the server's output.
    output = log.read_text()
    for secret in (admin[1], token, json_login.body["token"]):
        assert secret not in output


def worker_pids(server: subprocess.Popen) -> list[int]:
    """The pids of `server`'s children (gunicorn's workers, for its master), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": the command name may hold spaces and parentheses.
        if int(text.rsplit(")", 1)[1].split()[1]) == server.pid:
            pids.append(int(text.split(" ", 1)[0]))
    return sorted(pids)


# --- `make run`'s command, served -----------------------------------------------------------

ADMIN = ("admin", "serving-admin-password-1")


def server_environment(database_url: str, instance_path: Path) -> dict:
    """What `make run` would see, with every setting the session depends on pinned."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "development",
        "INSTANCE_PATH": str(instance_path),
        **database_environment(database_url),
        "SECRET_KEY": "serving-test-secret-key",
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        # Pinned so that a developer's .env (read too, but never overriding) cannot change them.
        "TOKEN_TTL": "3600",
        "TRUSTED_PROXY_HOPS": "0",
        "GUNICORN_WORKERS": "2",
    }


@contextmanager
def serving(database_url: str, tmp_path: Path, **environ: str):
    """`make run`'s command on a migrated database, with `environ` on top of
    server_environment; yields (client, server output)."""
    port = free_port()
    log = tmp_path / "server.log"
    server = start(make_run_command(port),
                   server_environment(database_url, tmp_path) | environ, log)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        wait_until_ready(client, server, log)
        yield client, log
    finally:
        stop(server)
