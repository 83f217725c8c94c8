"""Fault tests (issue #5.5): a real PostgreSQL and a real gunicorn, broken under load.

Each test serves the app with gunicorn (2 workers, backend/gunicorn_conf.py otherwise)
against a private PostgreSQL cluster of its own (tests/pgcluster.py: restarting it disturbs no
other test run), drives it with several client threads, breaks something mid-run, and then
holds the trail to its promise:

- every request that got a 2xx has exactly one row (found by the response's X-Request-ID:
  its `api.request` row for GET /v1/me, its `login.success` row for POST /login);
- no row is duplicated (no request id/event pair twice, no event id twice);
- `flask audit verify` still finds the chain intact.

Every request also carries a User-Agent of its own, so the rows of a request whose client got
no response can be found too. The figures of each fault are printed (run pytest with -s) and
written to faults.json in the test's own tmp_path (bench/ keeps only the benchmarks' results).
"""

import contextlib
import http.client
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from backend.audit.events import AuditEvent
from backend.audit.spool import Spool
from tests.serving import (
    BIN,
    Client,
    checked_flask,
    flask,
    free_port,
    running,
    wait_until_ready,
    worker_pids,
)

pytestmark = [pytest.mark.serving, pytest.mark.faults]

ADMIN = ("admin", "faults-admin-password-1")
LOADER_PASSWORD = "faults-loader-password-1"
CLIENTS = 6
WORKERS = 2
GRACEFUL_TIMEOUT = 10  # seconds; gunicorn_conf.py says 30, shortened to bound the test
LOAD_BEFORE = 3.0  # seconds of load before the fault
LOAD_AFTER = 3.0  # ... and after it
MAX_REQUESTS_PER_CLIENT = 5000  # a bound on the load whatever the timing
# The row each kind of request must leave (its status is whatever the response's was).
ROW_EVENT = {"me": "api.request", "login": "login.success"}
# What a client sees when no (complete) response arrives.
NO_RESPONSE = (OSError, ValueError, http.client.HTTPException)


# --- the database and the server -------------------------------------------------------------
def environment(database_url: str, instance_path: Path) -> dict:
    """The environment of gunicorn and of the `flask` commands: one database, one spool, one
    signing key (a checkpoint every 100 rows, so signatures are made during the faults too)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "development",
        "INSTANCE_PATH": str(instance_path),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "faults-secret-key",
        "AUDIT_SIGNING_KEY": "faults-audit-signing-key",
        "AUDIT_CHECKPOINT_EVERY": "100",
        # Pinned so that a developer's .env (read too, but never overriding) cannot change them.
        "TOKEN_TTL": "3600",
        "TRUSTED_PROXY_HOPS": "0",
    }


def gunicorn_command(port: int) -> list[str]:
    """gunicorn as deployed (backend/gunicorn_conf.py), with the test's size and deadlines."""
    return [
        str(BIN / "python"),
        "-m",
        "gunicorn",
        "-c",
        "python:backend.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(WORKERS),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT),
        "wsgi:app",
    ]


@pytest.fixture(scope="module")
def database(cluster, tmp_path_factory) -> str:
    """A database in the private cluster, migrated, with an admin."""
    url = cluster.create_database("audit", "audit", "audit-faults-password")
    env = environment(url, tmp_path_factory.mktemp("faults-setup"))
    checked_flask(env, "db", "upgrade")
    checked_flask(
        env, "users", "create", ADMIN[0], "--admin", "--password-stdin", stdin=ADMIN[1] + "\n"
    )
    return url


@dataclass
class Served:
    port: int
    client: Client
    process: subprocess.Popen
    log: Path
    env: dict
    token: str  # the admin's, for GET /v1/me
    loaders: list  # one (username, password) per client thread, for POST /login


@pytest.fixture
def served(database, tmp_path):
    """gunicorn on the private database (its spool under tmp_path), with one user per client."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = environment(database, tmp_path)
    with running(gunicorn_command(port), env, log, port) as (client, server):
        login = client.post("/login", basic=ADMIN)
        assert login.status == 200, login.body
        token = login.body["token"]
        loaders = [(f"loader{index}", LOADER_PASSWORD) for index in range(CLIENTS)]
        for name, password in loaders:  # the users outlive a test; the next one finds them
            created = client.post(
                "/v1/users", token=token, json_body={"username": name, "password": password}
            )
            assert created.status in (201, 409), created.body
        yield Served(port, client, server, log, env, token, loaders)


# --- the load ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request as its client saw it."""

    kind: str  # "me" or "login"
    agent: str  # its own User-Agent: its rows can be found even without a response
    sent: float  # time.monotonic()
    done: float = 0.0
    status: int | None = None
    request_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Load:
    """CLIENTS threads, each sending requests one after the other until stopped: three
    GET /v1/me with the admin's token, then a POST /login of its own user, and again."""

    def __init__(self, served: Served, tag: str, stop_on_error: bool = False):
        self.served = served
        self.tag = tag
        self.stop_on_error = stop_on_error
        self.stopping = threading.Event()
        self.outcomes: list[Outcome] = []
        self.threads = [
            threading.Thread(
                target=self._run, args=(index,), daemon=True, name=f"load-{tag}-{index}"
            )
            for index in range(CLIENTS)
        ]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        # A request waits at most Client's 10 s timeout.
        for thread in self.threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in self.threads), "a client hangs"

    def _run(self, index: int) -> None:
        client = self.served.client
        for sequence in range(MAX_REQUESTS_PER_CLIENT):
            if self.stopping.is_set():
                return
            kind = "login" if sequence % 4 == 3 else "me"
            outcome = Outcome(kind, f"faults/{self.tag}/{index}/{sequence}", time.monotonic())
            headers = {"User-Agent": outcome.agent}
            try:
                if kind == "me":
                    reply = client.get("/v1/me", token=self.served.token, headers=headers)
                else:
                    reply = client.post("/login", basic=self.served.loaders[index], headers=headers)
                outcome.status, outcome.request_id = reply.status, reply.headers.get("X-Request-ID")
            except NO_RESPONSE as error:
                outcome.error = f"{type(error).__name__}: {error}"
            outcome.done = time.monotonic()
            self.outcomes.append(outcome)
            if outcome.error is not None:
                if self.stop_on_error:
                    return
                time.sleep(0.05)  # no busy loop against a port that refuses


# --- the ground truth ----------------------------------------------------------------------
@dataclass
class Row:
    id: int
    event_id: str
    event: str
    status: int | None
    request_id: str | None
    user_agent: str | None


def trail(database_url: str) -> list[Row]:
    with psycopg.connect(database_url, connect_timeout=10) as connection:
        return [
            Row(*values)
            for values in connection.execute(
                "SELECT id, event_id::text, event, status, request_id, user_agent FROM audit_log"
                " ORDER BY id"
            )
        ]


@dataclass
class Figures:
    fault: str
    requests_sent: int
    responses: int
    ok_2xx: int
    rows_found: int  # rows of the 2xx responses (one each, unless duplicated)
    rows_lost: int  # 2xx without their row: must be 0
    rows_with_another_status: int  # a 2xx's row that records another status: must be 0
    duplicates: int  # extra rows of a request id/event pair, plus repeated event ids: must be 0
    no_response: int  # connection refused/reset, timeouts, cut-off bodies
    served_without_response: int  # rows exist, but the client got no (complete) response
    responses_without_row: int  # a response, whatever its status, and no row of its request
    statuses: dict
    errors: dict
    notes: dict = field(default_factory=dict)
    lost: list = field(default_factory=list)


def figures(fault: str, outcomes: list[Outcome], rows: list[Row]) -> Figures:
    pairs = Counter((row.request_id, row.event) for row in rows if row.request_id)
    statuses = {(row.request_id, row.event): row.status for row in rows if row.request_id}
    event_ids = Counter(row.event_id for row in rows)
    agents = Counter(row.user_agent for row in rows)
    ok = [o for o in outcomes if o.ok]
    lost = [o for o in ok if pairs[(o.request_id, ROW_EVENT[o.kind])] == 0]
    failed = [o for o in outcomes if o.error is not None]
    return Figures(
        fault=fault,
        requests_sent=len(outcomes),
        responses=sum(o.status is not None for o in outcomes),
        ok_2xx=len(ok),
        rows_found=sum(pairs[(o.request_id, ROW_EVENT[o.kind])] for o in ok),
        rows_lost=len(lost),
        rows_with_another_status=sum(
            statuses.get((o.request_id, ROW_EVENT[o.kind]), o.status) != o.status for o in ok
        ),
        duplicates=sum(n - 1 for n in pairs.values() if n > 1)
        + sum(n - 1 for n in event_ids.values() if n > 1),
        no_response=len(failed),
        served_without_response=sum(agents[o.agent] > 0 for o in failed),
        responses_without_row=sum(agents[o.agent] == 0 for o in outcomes if o.status),
        statuses=dict(sorted(Counter(str(o.status) for o in outcomes if o.status).items())),
        errors=dict(Counter(o.error.split(":")[0] for o in failed)),
        lost=[asdict(o) for o in lost[:10]],
    )


def report(result: Figures, directory: Path) -> None:
    """Print the figures and keep them in `directory`/faults.json, by fault."""
    print(
        f"\n[{result.fault}] requests sent {result.requests_sent}, 2xx received"
        f" {result.ok_2xx}, rows found {result.rows_found}, rows lost {result.rows_lost},"
        f" duplicates {result.duplicates}; no response {result.no_response}"
        f" (of which served: {result.served_without_response}); responses without a row"
        f" {result.responses_without_row}; statuses {result.statuses};"
        f" errors {result.errors}; {result.notes}"
    )
    results = directory / "faults.json"
    try:
        saved = json.loads(results.read_text())
    except (OSError, ValueError):
        saved = {}
    saved[result.fault] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **asdict(result)}
    results.write_text(json.dumps(saved, indent=2) + "\n")


def settle(served: Served, requests: int = 2 * WORKERS * CLIENTS) -> None:
    """Once the service answers again, a few writes so that each worker replays the spool."""
    wait_until_ready(served.client, served.process, served.log)
    for _ in range(requests):
        assert served.client.get("/v1/me", token=served.token).status == 200


def finish(served: Served, fault: str, outcomes: list[Outcome], notes: dict) -> Figures:
    """Replay what is left in the spool, count, check the chain, and report."""
    replayed = checked_flask(served.env, "audit", "replay").strip()
    spool = Spool(Path(served.env["INSTANCE_PATH"]) / "audit-spool.jsonl")
    output = served.log.read_text(errors="replace")
    notes = {
        **notes,
        "flask audit replay": replayed,
        "spool left": spool.count(),
        # What backend/audit/writer.py logs; for the record only, never asserted on.
        "spooled (server log)": output.count("spooling them"),
        "replayed (server log)": sum(
            int(count) for count in re.findall(r"replayed (\d+) spooled audit events", output)
        ),
    }
    result = figures(fault, outcomes, trail(served.env["DATABASE_URL"]))
    result.notes = notes
    report(result, Path(served.env["INSTANCE_PATH"]))  # the test's tmp_path
    verify = flask(served.env, "audit", "verify")
    assert verify.returncode == 0, f"the chain is broken:\n{verify.stdout}\n{verify.stderr}"
    assert result.requests_sent > 0 and result.ok_2xx > 0
    assert result.rows_lost == 0, f"2xx without their row: {result.lost}"
    assert result.rows_found == result.ok_2xx
    assert result.rows_with_another_status == 0
    assert result.duplicates == 0
    assert notes["spool left"] == 0
    # Not only the 2xx: a 401, 429 or 500 that reached its client has its row too.
    assert result.responses_without_row == 0
    return result


# --- the faults -------------------------------------------------------------------------------
def client_connections(pid: int, port: int) -> int:
    """How many established connections to the server's `port` the process `pid` holds."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                inodes.add(os.readlink(fd).removeprefix("socket:[").removesuffix("]"))
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:  # it exited meanwhile
        return 0
    count = 0
    for line in table:
        fields = line.split()  # sl local_address rem_address st ... uid timeout inode
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
            count += 1
    return count


def busy_worker(served: Served, deadline: float = 5.0) -> tuple[int, int]:
    """A worker with requests in flight, and how many connections it holds: killing an idle
    one would cut nothing."""
    workers: list[int] = []
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        workers = worker_pids(served.process.pid)
        if len(workers) == WORKERS:
            held = {pid: client_connections(pid, served.port) for pid in workers}
            victim = max(held, key=held.get)
            if held[victim]:
                return victim, held[victim]
        time.sleep(0.002)
    pytest.fail(f"no worker of {workers} held a client connection within {deadline} s")


def test_postgresql_restart_under_load_loses_and_duplicates_no_row(served, cluster):
    with Load(served, "pg-restart") as load:
        time.sleep(LOAD_BEFORE)
        down = time.monotonic()
        cluster.stop("fast")  # open transactions roll back, every connection is cut
        stopped = time.monotonic()
        time.sleep(2)
        starting = time.monotonic()
        cluster.start()
        up = time.monotonic()
        time.sleep(LOAD_AFTER)
    settle(served)
    # Overlapping the outage: a 2xx among them may have had its row spooled, then replayed.
    during = [o for o in load.outcomes if o.done > down and o.sent < up]
    # Sent and answered while the server was down: their rows can only have come from the
    # spool (finish() checks that every response has its row).
    down_all_along = [
        o for o in load.outcomes if o.status is not None and stopped < o.sent and o.done < starting
    ]
    result = finish(
        served,
        "postgresql restart",
        load.outcomes,
        {
            "outage_s": round(up - down, 2),
            "requests during the outage": len(during),
            "2xx during the outage": sum(o.ok for o in during),
            "answered while the server was down": len(down_all_along),
        },
    )
    # The outage was felt (the spool took what the database could not), and the service came
    # back on its own: 2xx after the restart without restarting gunicorn.
    assert down_all_along
    assert any(o.ok and o.sent > up for o in load.outcomes)
    # gunicorn stayed up: every request was answered, none was cut off because the database
    # went away under it; and one the database's absence stopped is a 503 to retry, not a 500.
    assert result.no_response == 0, result.errors
    assert "500" not in result.statuses, result.statuses


def test_killing_a_worker_under_load_loses_and_duplicates_no_row(served):
    with Load(served, "kill-worker") as load:
        time.sleep(LOAD_BEFORE)
        victim, connections = busy_worker(served)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(LOAD_AFTER)
    deadline = time.monotonic() + 10  # the master replaces the worker
    while len(worker_pids(served.process.pid)) != WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    replaced = worker_pids(served.process.pid)
    assert len(replaced) == WORKERS and victim not in replaced, replaced
    settle(served)
    result = finish(
        served,
        "kill -9 a worker",
        load.outcomes,
        {
            "client connections of the killed worker": connections,
            "2xx after the kill": sum(o.ok and o.sent > killed for o in load.outcomes),
        },
    )
    assert result.notes["2xx after the kill"] > 0
    # Only the killed worker's requests may go unanswered (a client has one in flight at a
    # time), and only those sent before the kill: the other worker and the new one answer.
    failed = [o for o in load.outcomes if o.error is not None]
    assert len(failed) <= CLIENTS and all(o.sent < killed for o in failed), result.errors


def test_sigterm_under_load_lets_in_flight_requests_finish_with_their_rows(served):
    # A client stops at its first request without a response: once the master has closed
    # its sockets every later request would be refused.
    with Load(served, "sigterm", stop_on_error=True) as load:
        time.sleep(LOAD_BEFORE)
        served.process.send_signal(signal.SIGTERM)
        term = time.monotonic()
        try:
            returncode = served.process.wait(timeout=GRACEFUL_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            returncode = None
        exited = time.monotonic()
    in_flight = [o for o in load.outcomes if o.sent < term < o.done]
    finished = [o for o in in_flight if o.status is not None]
    result = finish(
        served,
        "SIGTERM during load",
        load.outcomes,
        {
            "exit_s": round(exited - term, 2),
            "exit code": returncode,
            "in flight at SIGTERM": len(in_flight),
            "in flight, answered": len(finished),
            "in flight, answered 2xx": sum(o.ok for o in finished),
        },
    )
    assert returncode == 0, served.log.read_text()[-3000:]
    assert exited - term < GRACEFUL_TIMEOUT
    assert finished, "no request was in flight when SIGTERM came: nothing was tested"
    # Every request the server had begun (it left a row) was answered, completely: a client
    # without a response is one whose connection gunicorn never accepted.
    assert result.served_without_response == 0


def test_a_database_refused_event_in_the_spool_is_set_aside_and_the_trail_flows(served):
    """An event the database refuses (a status beyond smallint, which no validation of the
    service stops when it comes straight from the spool file) is planted in the spool mid-load:
    the next write of either worker sets it aside and records `audit.rejected`, and the trail
    keeps reaching the database; nothing waits in the spool behind it."""
    instance = Path(served.env["INSTANCE_PATH"])
    spool = Spool(instance / "audit-spool.jsonl")
    refused = AuditEvent(
        source="app",
        event="faults.refused",
        level="INFO",
        track="planted in the spool",
        status=70_000,
    )
    with Load(served, "refused") as load:
        time.sleep(LOAD_BEFORE)
        spool.append(refused)
        planted = time.monotonic()
        time.sleep(LOAD_AFTER)
    left_behind = spool.count()  # before finish() replays anything
    result = finish(
        served,
        "a database-refused event in the spool",
        load.outcomes,
        {
            "2xx after the plant": sum(o.ok and o.sent > planted for o in load.outcomes),
            "spool left after the load": left_behind,
        },
    )
    assert left_behind == 0
    assert result.notes["2xx after the plant"] > 0
    assert result.notes["spooled (server log)"] == 0  # the database took every other event
    kept = [json.loads(line) for line in spool.rejected_path.read_bytes().splitlines()]
    assert [event["event_id"] for event in kept] == [str(refused.event_id)]
    assert stat.S_IMODE(spool.rejected_path.stat().st_mode) == 0o600
    with psycopg.connect(served.env["DATABASE_URL"], connect_timeout=10) as connection:
        rejections = connection.execute(
            "SELECT source, level, track FROM audit_log WHERE event = 'audit.rejected'"
        ).fetchall()
    assert rejections == [
        (
            "app",
            "ERROR",
            f"the database refused event {refused.event_id}"
            " (app/faults.refused); set aside in audit-spool.jsonl.rejected:"
            ' value "70000" is out of range for type smallint',
        )
    ]
