"""The service served for real: `make run`'s command, then the README's curl session.

The Makefile's `run` command (the boot: `flask db upgrade`, `flask users ensure-admin`, then
gunicorn with backend/gunicorn_conf.py) runs as a subprocess of the venv, against each
database of the `database_url` fixture; the session talks to it over a loopback socket with
urllib, and then reads its own steps back from /v1/logs and from the access log.
"""

import os
import socket
import subprocess
import time

import psycopg
import pytest

import config
from bench import load
from bench.database import libpq_url
from tests.conftest import owner_url, postgresql_only, wsgi_header
from tests.serving import (
    ADMIN,
    BIN,
    READY_DEADLINE,
    free_port,
    readme_session,
    serving,
    stop,
)

pytestmark = pytest.mark.serving


def test_make_run_serves_with_the_gunicorn_config_and_creates_the_admin(served):
    _, log = served
    output = log.read_text()
    assert f"created admin {ADMIN[0]}\n" in output
    assert "serving with 2 gevent workers" in output  # backend/gunicorn_conf.py's line


def test_the_readme_session_works_and_leaves_its_trail(served):
    client, log = served
    readme_session(client, log, ADMIN)


def test_production_without_its_secrets_stops_gunicorn_with_a_clear_message(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "production",
        "INSTANCE_PATH": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    server = subprocess.Popen(
        [BIN / "gunicorn", "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "wsgi:app"],
        cwd=config.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = server.communicate(timeout=READY_DEADLINE)
    finally:
        stop(server)
    assert server.returncode != 0
    assert "configuration error: APP_ENV=production needs DATABASE_URL" in output


@postgresql_only
def test_a_client_that_leaves_mid_export_cancels_its_copy(database_url, tmp_path):
    """On PostgreSQL the export is a COPY that writes as fast as the client reads. A client
    that goes away mid-file must not leave it behind, blocked on a socket nobody reads (and
    holding a connection): gunicorn closes the response, and the export cancels the COPY."""
    # ~20 MB of NDJSON, loaded by the tables' owner (bench/load.py drops and remakes indexes)
    load.load(libpq_url(owner_url(database_url)), 40_000, b"serving-test-signing-key")
    with serving(database_url, tmp_path) as (client, _):
        port = int(client.base_url.rsplit(":", 1)[1])
        token = client.post("/login", basic=ADMIN).body["token"]
        request = (
            f"GET /v1/logs/export HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(request)
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
            assert exports_running(database_url) == 1  # mid-COPY, waiting for its reader
        deadline = time.monotonic() + 10
        while exports_running(database_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exports_running(database_url) == 0
        # And the worker serves the next export whole.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            data = b"".join(iter(lambda: connection.recv(1 << 20), b""))
        assert data.count(b'\n{"id":') >= 40_000


def exports_running(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (%' AND state = 'active'"
        ).fetchone()[0]


def test_gunicorn_records_a_utf8_user_agent_as_the_text_sent(served):
    """gunicorn hands header bytes to the app decoded as Latin-1, as WSGI says: the trail
    stores the UTF-8 text the client sent, not its mojibake."""
    client, _ = served
    agent = "Navigateur/1.0 (Zürich ☃)"
    # urllib sends a header's characters as Latin-1 bytes: these are the agent's UTF-8 bytes.
    index = client.get("/", headers={"User-Agent": wsgi_header(agent)})
    token = client.post("/login", basic=ADMIN).body["token"]
    rows = client.get("/v1/logs?event=index.view", token=token).body["items"]
    assert [(row["request_id"], row["user_agent"]) for row in rows] == [
        (index.headers["X-Request-ID"], agent)
    ]
