"""Benchmark: the audit log's queries and its export at N rows, on PostgreSQL, over HTTP.

    .venv/bin/python -m bench.query [--rows 1000000] [--requests 200] [--url URL] [--reuse]
                                    [--months 12] [--exports ndjson,csv,ocsf]

Creates the database of URL (dropping it first; default `audit_bench` on the local server, as
the `audit` role, which needs CREATEDB), migrates it, loads N synthetic rows (bench/load.py:
a valid chain, by COPY), serves the app with gunicorn, and prints a table: p50 and p95
latency of a 100-row page of /v1/logs for each query shape (first page, page 1,000 reached by
following the cursor, each filter alone, filters combined, `q`), what PostgreSQL itself spent
on each (EXPLAIN ANALYZE, warm) and the index it used; then the export's rate and the peak
memory of the serving processes. `--reuse` keeps an already loaded database. `--months`
spreads the rows over that many months (one partition each: migration 0012). Results and the
plans also go to bench/results/.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg

from bench import database, load
from bench.serving import answering, free_port, running, status_kb, worker_pids

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_URL = "postgresql://audit:audit@127.0.0.1:5432/audit_bench"
ADMIN = ("bench-admin", "bench-admin-password")
MEMBER = ("user0042", "user0042-password")  # an ordinary user of the synthetic trail
DEEP_PAGE = 1000
# Query parameters of /v1/logs, chosen in the synthetic trail of bench/load.py.
SHAPES = {
    "first page": {},
    "user": {"user": "user0042"},
    "ip": {"ip": "10.0.42.2"},
    "level": {"level": "WARNING"},
    "levels, rare (ERROR,CRITICAL)": {"level": "ERROR,CRITICAL"},
    "source, rare (app)": {"source": "app"},
    "event": {"event": "login.failure"},
    "since + until (one day)": {"since": "2025-07-01T00:00:00Z", "until": "2025-07-02T00:00:00Z"},
    "user + source + levels": {"user": "user0042", "source": "v1", "level": "WARNING,ERROR"},
    "event + ip + since": {
        "event": "login.failure",
        "ip": "10.0.42.2",
        "since": "2025-03-01T00:00:00Z",
    },
    "target (one user)": {"target": "user1042"},
    "target_type (user)": {"target_type": "user"},
    "outcome, rare (error)": {"outcome": "error"},
    "outcomes (failure,denied)": {"outcome": "failure,denied"},
    "target_type + outcome": {"target_type": "trail", "outcome": "failure"},
    "q, common (level=warning)": {"q": "level=warning"},
    "q, rare (ZeroDivision)": {"q": "ZeroDivision"},
    # Every trigram of it is in most rows (the api.request tracks, ~70%), as a trail where
    # every track shares its words: the trigram index narrows nothing down.
    "q, common trigrams (GET /v1/)": {"q": "GET /v1/"},
}
MEMBER_SHAPE = "as a non-admin (own rows)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per shape")
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    parser.add_argument(
        "--months", type=int, default=12, help="months the rows span (a partition each)"
    )
    parser.add_argument(
        "--exports",
        type=lambda text: [fmt for fmt in text.split(",") if fmt],
        default=["ndjson", "csv", "ocsf"],
        help="export formats to measure, comma separated ('' for none)",
    )
    parser.add_argument(
        "--default-costs",
        action="store_true",
        help="leave random_page_cost at PostgreSQL's default of 4 (HDD)",
    )
    options = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = Report(RESULTS / f"query-{options.rows}.txt")
    report.line(
        f"rows: {options.rows:,}  requests per shape: {options.requests}  "
        f"cpus: {os.cpu_count()}  load average: {load_average()}"
    )
    instance = tempfile.mkdtemp(prefix="audit-bench-")
    settings = database.bench_settings(options.url, instance)
    try:
        if not options.reuse:
            prepare(options, settings, report)
        ensure_users(settings)
        with serve(options.url, instance) as server:
            measure(server, options, report)
    finally:
        shutil.rmtree(instance, ignore_errors=True)
    report.line(f"load average after: {load_average()}")


def prepare(options, settings: dict, report: "Report") -> None:
    """A new database with N rows and the users the benchmark logs in as."""
    database.recreate(options.url)
    database.migrate(settings)
    url = database.libpq_url(options.url)
    if not options.default_costs:
        # Every page of the table is in memory or on SSD: random reads cost about what
        # sequential ones do (the usual setting for SSD-backed PostgreSQL).
        with psycopg.connect(url, autocommit=True) as connection:
            name = urlsplit(url).path.lstrip("/")
            connection.execute(f'ALTER DATABASE "{name}" SET random_page_cost = 1.1')
    done = [0]

    def progress(rows: int) -> None:
        done[0] += rows
        if sys.stderr.isatty():
            print(f"\rloading {done[0]:,}/{options.rows:,}", end="", file=sys.stderr)

    result = load.load(
        url,
        options.rows,
        settings["AUDIT_SIGNING_KEY"].encode(),
        settings["AUDIT_CHECKPOINT_EVERY"],
        progress=progress,
        months=options.months,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    report.line(
        f"load: {result.rows:,} rows in {result.seconds:.0f} s (COPY with hashing "
        f"{result.copy_seconds:.0f} s = {result.rows / result.copy_seconds:,.0f} rows/s,"
        f" indexes {result.index_seconds:.0f} s, VACUUM ANALYZE "
        f"{result.vacuum_seconds:.0f} s)"
    )


def ensure_users(settings: dict) -> None:
    """The admin and the ordinary user the benchmark logs in as."""
    from backend import create_app, dispose_engines
    from backend.accounts import UsernameTaken, create_user

    app = create_app(settings)
    with app.app_context():
        for name, password in (ADMIN, MEMBER):
            try:
                create_user(name, password, is_admin=name == ADMIN[0])
            except UsernameTaken:
                pass
    dispose_engines(app)


WORKERS = 2


@contextmanager
def serve(url: str, instance: str):
    """gunicorn serving the app on a free loopback port, with production's gunicorn settings
    (gevent workers), 2 workers and no access log."""
    port = free_port()
    environment = {
        **os.environ,
        **database.bench_environ(url, instance),
        "GUNICORN_WORKERS": str(WORKERS),
        "GUNICORN_ACCESS_LOG": "",
    }
    # A long timeout: at 10M rows a full export takes minutes.
    command = [
        Path(sys.executable).parent / "gunicorn",
        "-c",
        "python:backend.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "600",
        "wsgi:app",
    ]
    log = Path(instance) / "gunicorn.log"
    with running(command, ROOT, environment, log, answering(port, "/healthz", WORKERS)) as process:
        yield Server(port, process)


class Server:
    """A client of the gunicorn of `serve`."""

    def __init__(self, port: int, process: subprocess.Popen):
        self.port = port
        self.process = process

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response
        finally:
            connection.close()

    def token(self, username: str, password: str) -> str:
        credentials = b64encode(f"{username}:{password}".encode()).decode()
        status, body, _ = self.request("POST", "/login", {"Authorization": f"Basic {credentials}"})
        assert status == 200, body
        return json.loads(body)["token"]

    def workers(self) -> list[int]:
        return worker_pids(self.process.pid)


def measure(server: Server, options, report: "Report") -> None:
    admin = server.token(*ADMIN)
    member = server.token(*MEMBER)
    plans = RESULTS / f"explain-{options.rows}.txt"
    plans.write_text("")
    report.line("")
    report.line(f"{'shape (100-row page)':34} {'p50 ms':>8} {'p95 ms':>8} {'db ms':>7}  plan")
    first = None
    for name, params in [*SHAPES.items(), (MEMBER_SHAPE, {})]:
        token = member if name == MEMBER_SHAPE else admin
        timings = timed(server, f"/v1/logs?{query_string(params)}", token, options.requests)
        db_ms, plan = explain(options.url, params, name == MEMBER_SHAPE, plans, name)
        report.row(name, timings, db_ms, plan)
        if name == "first page":
            first = timings
            deep = deep_page_cursor(server, admin)
            timings = timed(
                server, f"/v1/logs?{urlencode({'after': deep})}", admin, options.requests
            )
            report.row(f"page {DEEP_PAGE:,} (following next)", timings, None, "")
    deep = timings_of(report, f"page {DEEP_PAGE:,}")
    report.line(
        f"page {DEEP_PAGE:,} / first page: p50 "
        f"{percentile(deep, 50) / percentile(first, 50):.2f}, p95 "
        f"{percentile(deep, 95) / percentile(first, 95):.2f}"
    )
    report.line("")
    for fmt in options.exports:
        rows, seconds, size, peak = export_rate(server, admin, fmt)
        report.line(
            f"export {fmt:6}: {rows:,} rows, {size / 1e6:,.0f} MB in {seconds:.1f} s = "
            f"{rows / seconds:,.0f} rows/s; serving processes' peak RSS: "
            f"{peak / 1024:.0f} MB"
        )


def query_string(params: dict) -> str:
    """`params` for the URL, with every byte of `q` percent-encoded: each request is audited
    with its raw query string in `track`, and `q=ZeroDivision` would make the benchmark's own
    rows match its search (more of them with every --reuse run); `q=%5A%65...` does not."""
    encoded = {name: value for name, value in params.items() if name != "q"}
    if "q" not in params:
        return urlencode(encoded)
    q = "".join(f"%{byte:02X}" for byte in params["q"].encode())
    return "&".join(filter(None, [urlencode(encoded), f"q={q}"]))


def timed(server: Server, path: str, token: str, count: int) -> list[float]:
    """Seconds per request, after a few untimed ones (so the pages are in memory)."""
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(5):
        server.request("GET", path, headers)
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        status, body, _ = server.request("GET", path, headers)
        timings.append(time.perf_counter() - started)
        assert status == 200, body[:300]
    return timings


def deep_page_cursor(server: Server, token: str) -> str:
    """The `after` of page DEEP_PAGE, reached by following `next` from the first page."""
    headers = {"Authorization": f"Bearer {token}"}
    cursor = None
    for _ in range(DEEP_PAGE - 1):
        query = f"?{urlencode({'after': cursor})}" if cursor else ""
        status, body, _ = server.request("GET", f"/v1/logs{query}", headers)
        cursor = json.loads(body)["next"]
    return cursor


def explain(url: str, params: dict, as_member: bool, plans: Path, name: str) -> tuple:
    """PostgreSQL's own time for the shape's query (warm, the best of three), and its plan's
    access path; the whole plan goes to `plans`."""
    from backend.audit import listing
    from backend.models import User
    from backend.schemas import LogQuerySchema
    from bench.plans import access_path, explain_analyze

    viewer = User(username=MEMBER[0], is_admin=not as_member)
    with psycopg.connect(database.libpq_url(url)) as connection:
        filters = LogQuerySchema().load(params)
        ids = None
        newest = connection.execute("SELECT max(id) FROM audit_log").fetchone()[0] or 0
        if filters.get("q") and newest >> listing.ID_BLOCK_BITS:  # as listing.page: its first
            block = newest >> listing.ID_BLOCK_BITS  # part, the newest block from its first row
            (starts_at,) = connection.execute(
                "SELECT created_at FROM audit_log WHERE id >= %s ORDER BY id LIMIT 1",
                (block << listing.ID_BLOCK_BITS,),
            ).fetchone()
            ids = listing.in_block(block, starts_at)
        statement = listing.first_rows(
            filters, viewer, filters["order"], filters["limit"] + 1, ids=ids
        )
        runs = [explain_analyze(connection, statement) for _ in range(3)]
    best, lines = min(runs)
    with plans.open("a") as out:
        out.write(f"== {name}: {params}\n" + "\n".join(lines) + "\n\n")
    return best, access_path(lines)


def export_rate(server: Server, token: str, fmt: str) -> tuple[int, float, int, int]:
    """Rows, seconds and bytes of a full export read as fast as the client can, and the
    serving processes' peak resident memory (VmHWM) in KiB."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    started = time.perf_counter()
    connection.request(
        "GET", f"/v1/logs/export?format={fmt}", headers={"Authorization": f"Bearer {token}"}
    )
    response = connection.getresponse()
    assert response.status == 200
    size = lines = 0
    while chunk := response.read1(1 << 20):
        size += len(chunk)
        lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    connection.close()
    rows = lines - 1 if fmt == "csv" else lines
    return rows, seconds, size, max(status_kb(pid, "VmHWM") for pid in server.workers())


def percentile(timings: list[float], p: int) -> float:
    return statistics.quantiles(timings, n=100, method="inclusive")[p - 1] * 1000


def timings_of(report: "Report", prefix: str) -> list[float]:
    return next(timings for name, timings in report.timings.items() if name.startswith(prefix))


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as `uptime` prints them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Report:
    """Prints the results, and keeps them in a file and for later rows."""

    def __init__(self, path: Path):
        self.path = path
        self.path.write_text("")
        self.timings: dict[str, list[float]] = {}

    def line(self, text: str) -> None:
        print(text, flush=True)
        with self.path.open("a") as out:
            out.write(text + "\n")

    def row(self, name: str, timings: list[float], db_ms: float | None, plan: str) -> None:
        self.timings[name] = timings
        db = f"{db_ms:7.2f}" if db_ms is not None else f"{'':7}"
        self.line(
            f"{name:34} {percentile(timings, 50):8.2f} {percentile(timings, 95):8.2f} {db}  {plan}"
        )


if __name__ == "__main__":
    main()
