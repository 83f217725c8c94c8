"""Helpers of the tests that serve the app for real: start the boot, talk HTTP, stop it.

The launcher is bench/serving.py's, shared with the benchmarks: every wait has a deadline, and
`stop` leaves no process behind. Here a server that never serves fails the test.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import bench.serving as launcher
import config
from bench.serving import READY_DEADLINE, NotServing, free_port, stop, worker_pids  # noqa: F401
from tests.conftest import database_environment

BIN = Path(sys.executable).parent


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

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        json_body: dict | None = None,
        headers: dict | None = None,
    ) -> Reply:
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


CLI_TIMEOUT = 60.0  # seconds a `flask` command run as a process may take


def flask(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`flask ARGS` in the repository with `env`; its exit code and output, bounded in time."""
    return subprocess.run(
        [BIN / "flask", *args],
        cwd=config.ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def checked_flask(env: dict, *args: str, stdin: str = "") -> str:
    """`flask ARGS`, which must exit 0; its standard output."""
    done = flask(env, *args, stdin=stdin)
    assert done.returncode == 0, f"flask {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_run_command(port: int) -> list[str]:
    """The command of the Makefile's `run` target, with its variables filled in."""
    recipe = (config.ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    [line] = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]
    line = line.replace("$(BIN)", str(BIN)).replace("$(PORT)", str(port))
    return shlex.split(line.removeprefix("exec "))


def start(command: list, env: dict, log: Path) -> subprocess.Popen:
    """Start `command` from the repository root in a session of its own, output to `log`."""
    return launcher.start(command, config.ROOT, env, log)


def readyz(client: Client) -> Callable[[subprocess.Popen], bool]:
    """A `ready` for bench/serving.py: /readyz answers 200."""
    return lambda server: client.get("/readyz").status == 200


def wait_until_ready(client: Client, server: subprocess.Popen, log: Path) -> None:
    """Poll /readyz until it answers 200; fail the test if the deadline passes or the server
    exits first."""
    try:
        launcher.wait_until(readyz(client), server, log)
    except NotServing as error:
        pytest.fail(str(error))


@contextmanager
def running(
    command: list, env: dict, log: Path, port: int
) -> Iterator[tuple[Client, subprocess.Popen]]:
    """`command` started from the repository root, ready (/readyz answers 200 on `port`, or
    the test fails), and stopped afterwards; yields a client of it and its process."""
    client = Client(f"http://127.0.0.1:{port}")
    try:
        with launcher.running(command, config.ROOT, env, log, readyz(client)) as server:
            yield client, server
    except NotServing as error:
        pytest.fail(str(error))


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

    # Three INFO rows of the admin so far (two logins, /v1/me; the boot's rows have no user):
    # two on the first page, one on the second.
    first = client.get(f"/v1/logs?user={admin[0]}&level=INFO&limit=2", token=token)
    assert first.status == 200, first.body
    assert [row["request_id"] for row in first.body["items"]] == [
        me.headers["X-Request-ID"],
        json_login.headers["X-Request-ID"],
    ]
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
        admin[0],
        "WARNING",
        "invalid password",
        401,
    )

    logout = client.get("/logout", token=token)
    assert logout.status == 200 and logout.body == {"message": "logged out"}
    refused = client.get("/v1/me", token=token)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    # Every step left its row, under the request id its response carried.
    trail = {
        row["request_id"]: row
        for row in client.get("/v1/logs?limit=1000", token=json_login.body["token"]).body["items"]
    }
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
        assert (
            row["source"],
            row["event"],
            row["level"],
            row["user"],
            row["path"],
            row["status"],
            row["ip"],
        ) == (source, event, level, user, path, reply.status, "127.0.0.1")

    # ... and its access-log line, under the same request id, from the same address.
    logged = {entry["request_id"]: entry for entry in access_log(log)}
    for reply, *_, path in expected:
        entry = logged[reply.headers["X-Request-ID"]]
        assert (entry["path"], entry["status"], entry["client"]) == (
            path,
            reply.status,
            "127.0.0.1",
        )

    # Neither the password nor a token reached the server's output.
    output = log.read_text()
    for secret in (admin[1], token, json_login.body["token"]):
        assert secret not in output


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
    environment = server_environment(database_url, tmp_path) | environ
    with running(make_run_command(port), environment, log, port) as (client, _):
        yield client, log
