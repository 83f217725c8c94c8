"""GET /v1/logs/export against exports that never read, served for real: one gunicorn worker
with a pool of 4 connections (so 2 exports at once, 2 of one user) on a PostgreSQL trail of
~10 MB, and raw sockets that send the request and then read nothing.

An outside test found that 48 such sockets held 40 PostgreSQL sessions and made every other
request wait 10 s for a connection and get a 503 (backend/v1/export_guard.py).
"""

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest

from bench import load
from bench.database import libpq_url
from tests.conftest import empty_postgresql, owner_url
from tests.serving import ADMIN, Client, serving

pytestmark = [pytest.mark.serving, pytest.mark.slow]

AUDITOR = ("auditor", "auditor-password-1")
STALL_LIMIT = 3  # EXPORT_STALL_TIMEOUT of the served app, in seconds
DEADLINE = 15.0


@dataclass
class Served:
    client: Client
    database_url: str
    tokens: dict

    @property
    def port(self) -> int:
        return int(self.client.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def served(postgresql_url, tmp_path_factory) -> Iterator[Served]:
    """One served worker on a trail big enough to fill every socket buffer (~10 MB of NDJSON),
    and two admins who may export all of it."""
    empty_postgresql(postgresql_url)
    # Loaded by the tables' owner (bench/load.py drops and remakes indexes).
    load.load(libpq_url(owner_url(postgresql_url)), 20_000, b"export-bounds-signing-key")
    environ = {
        "GUNICORN_WORKERS": "1",
        "DATABASE_POOL_SIZE": "4",
        "EXPORT_STALL_TIMEOUT": str(STALL_LIMIT),
    }
    with serving(postgresql_url, tmp_path_factory.mktemp("served"), **environ) as (client, _):
        admin = client.post("/login", basic=ADMIN).body["token"]
        created = client.post(
            "/v1/users",
            token=admin,
            json_body={"username": AUDITOR[0], "password": AUDITOR[1], "is_admin": True},
        )
        assert created.status == 201, created.body
        auditor = client.post("/login", basic=AUDITOR).body["token"]
        yield Served(client, postgresql_url, {"admin": admin, "auditor": auditor})


def export_request(token: str) -> bytes:
    return (
        f"GET /v1/logs/export HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ).encode()


def ask_for_export(served: Served, who: str) -> socket.socket:
    """A connection that has asked for the whole trail as `who`, and reads nothing yet."""
    connection = socket.socket()
    # Before connecting: a small receive window, so that the server's writes block soon.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.settimeout(DEADLINE)
    connection.connect(("127.0.0.1", served.port))
    connection.sendall(export_request(served.tokens[who]))
    return connection


@contextmanager
def stalled(served: Served, *who: str, running: int) -> Iterator[list[socket.socket]]:
    """Ask for an export as each of `who`, read nothing, and wait until `running` of them (or
    more) hold a database session; afterwards close them all, and wait until none does."""
    connections = [ask_for_export(served, name) for name in who]
    try:
        wait_for(lambda: export_sessions(served) >= running, f"{running} exports running")
        yield connections
    finally:
        for connection in connections:
            connection.close()
        wait_for(lambda: export_sessions(served) == 0, "no export running")


def export_sessions(served: Served) -> int:
    """PostgreSQL sessions in an export's COPY (running, or stopped with its transaction
    open), as pg_stat_activity shows them."""
    with psycopg.connect(libpq_url(served.database_url), autocommit=True) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND query LIKE 'COPY (%' AND state <> 'idle'"
        ).fetchone()[0]


def wait_for(condition, what: str) -> float:
    """Poll `condition` until it holds; the seconds that took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE:
            pytest.fail(f"not within {DEADLINE:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    received = b""
    try:
        while data := connection.recv(1 << 20):
            received += data
    except ConnectionResetError:
        pass
    return received


def test_other_requests_keep_their_connections_while_exports_stall(served):
    with stalled(served, *["admin", "auditor"] * 4, running=2):
        started = time.monotonic()
        me = served.client.get("/v1/me", token=served.tokens["admin"])
        page = served.client.get("/v1/logs?limit=1", token=served.tokens["auditor"])
        waited = time.monotonic() - started
        assert export_sessions(served) == 2  # the worker's bound; the others were refused
    assert (me.status, page.status) == (200, 200)
    assert waited < 3  # not the 10 s of a request queued for a connection (config.POOL_TIMEOUT)


def test_an_export_past_the_bounds_is_429_with_retry_after(served):
    with stalled(served, "admin", "admin", running=2):
        # A third of the same user's, then one of another user past the worker's bound of 2.
        for who, message in [
            ("admin", "You have 2 exports running"),
            ("auditor", "Too many exports are running"),
        ]:
            with ask_for_export(served, who) as connection:
                head, _, body = read_all(connection).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 429 "), head
            assert b"\r\nRetry-After: 5\r\n" in head
            error = json.loads(body)["error"]
            assert (error["status"], error["code"]) == (429, "too_many_requests")
            assert error["message"].startswith(message)


def test_a_client_that_reads_nothing_is_cut_off_and_its_session_released(served):
    with stalled(served, "admin", "auditor", running=2) as connections:
        released_after = wait_for(lambda: export_sessions(served) == 0, "exports cut off")
        # Cut short: the chunked body never got its last, empty chunk.
        assert not any(
            read_all(connection).endswith(b"\r\n0\r\n\r\n") for connection in connections
        )
    assert released_after <= STALL_LIMIT + 3
    rows = served.client.get("/v1/logs?event=trail.export", token=served.tokens["admin"]).body[
        "items"
    ]
    assert sorted((row["user"], row["level"], row["status"]) for row in rows[:2]) == [
        ("admin", "WARNING", 200),
        ("auditor", "WARNING", 200),
    ]
    assert all(" cut off: the client read nothing for 3 s; " in row["track"] for row in rows[:2])
    assert [(row["outcome"], row["details"]["reason"]) for row in rows[:2]] == [
        ("denied", "stalled")
    ] * 2


def test_a_cut_off_export_gives_its_slot_back(served):
    with stalled(served, "admin", "admin", running=2):
        wait_for(lambda: export_sessions(served) == 0, "exports cut off")
    with ask_for_export(served, "admin") as connection:
        data = read_all(connection)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(dechunked(body).splitlines()) > 20_000  # the loaded rows, and the test's own


def dechunked(body: bytes) -> bytes:
    """The data of a whole chunked body (an incomplete one fails)."""
    data, position = b"", 0
    while True:
        size_line, _, _ = body[position:].partition(b"\r\n")
        size = int(size_line, 16)
        position += len(size_line) + 2
        if size == 0:
            assert body[position:] == b"\r\n"
            return data
        data += body[position : position + size]
        position += size + 2
