"""Benchmark: checking the trail at N rows on PostgreSQL, and its Merkle proofs over HTTP.

    .venv/bin/python -m bench.verify [--rows 1000000] [--requests 500] [--url URL] [--reuse]
        [--skip-offline] [--months 12] [--purge-before DATE] [--baseline]

Creates the database of URL (as bench/query.py does: dropped first, migrated, N synthetic rows
loaded by bench/load.py, their tree built), then prints:
- `flask audit verify` on the database: wall time, rows/s, and the CPU and peak memory that
  /usr/bin/time reports; with --baseline, verify as it was when #18 was filed, on this
  machine before and after it, and the ratio of the two rates (bench/baseline.py); then what
  PostgreSQL alone costs a row in verify's fast pass, on one core, and so the most rows/s
  this machine's cores allow (how close verify came, on any machine);
- the p50 and p95 latency of GET /v1/logs/<id>/proof (random rows, at the latest signed
  head) and GET /v1/logs/consistency (random sizes), over HTTP to gunicorn, after GET /v1/me's
  on the same server (an audited request that reads no trail: the machine's floor), each
  route's first WARMUP requests (other rows) not counted and printed apart (with --baseline,
  their p95 at the pace of the machine #18 was filed on too);
- the offline verifier (`python -m backend.audit.offline`) on an NDJSON export of the trail
  and its heads file (with --purge-before, after `flask audit purge`: the export then starts
  after a purge, and the verifier from the purged rows' stored tree hashes).
Results go to bench/results/verify-N.txt too.
"""

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from backend.audit import export, segment_scan, verification
from backend.models import Log
from bench import baseline, database
from bench.query import (
    ADMIN,
    DEFAULT_URL,
    RESULTS,
    ROOT,
    Report,
    ensure_users,
    load_average,
    percentile,
    prepare,
    serve,
)

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=500, help="timed requests per route")
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    parser.add_argument("--default-costs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-offline", action="store_true", help="no export, no offline run")
    parser.add_argument(
        "--months", type=int, default=12, help="months the rows span (a partition each)"
    )
    parser.add_argument(
        "--purge-before",
        metavar="DATE",
        help="before the offline run, `flask audit purge --before DATE` (the loaded rows end"
        " with 2025 and span --months before it): the export then starts after a purge",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"also time verify as it was when #18 was filed ({baseline.BASELINE}, on"
        f" {baseline.BASELINE_ROWS:,} rows of its own database), before verify and after, and"
        " print the ratio #18 sets",
    )
    options = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = Report(RESULTS / f"verify-{options.rows}.txt")
    report.line(f"rows: {options.rows:,}  cpus: {os.cpu_count()}  load average: {load_average()}")
    instance = tempfile.mkdtemp(prefix="audit-bench-verify-")
    settings = database.bench_settings(options.url, instance)
    environment = {**os.environ, **database.bench_environ(options.url, instance)}
    try:
        if not options.reuse:
            prepare(options, settings, report)
        ensure_users(settings)
        if options.baseline:  # before verify and after: the machine's pace may change
            baselines = [baseline.baseline_rate(options.url, options.reuse, timed_command)]
        rate = verify_rate(environment, report)
        if options.baseline:
            baselines.append(baseline.baseline_rate(options.url, True, timed_command))
            report.line(baseline.ratio_line(rate, baselines))
        pass_ceiling(settings["SQLALCHEMY_DATABASE_URI"], rate, report)
        with serve(options.url, instance) as server:
            p95s = proof_latency(server, options, report)
        if options.baseline:
            report.line(baseline.paced_line(p95s, baselines))
        if not options.skip_offline:
            if options.purge_before:
                purge(environment, options.purge_before, report)
            offline_rate(environment, Path(instance), report)
    finally:
        shutil.rmtree(instance, ignore_errors=True)
    report.line(f"load average after: {load_average()}")


def timed_command(
    command: list, environment: dict, stdout=subprocess.DEVNULL, cwd: Path = ROOT
) -> tuple:
    """Run `command` under /usr/bin/time; (wall seconds, CPU %, peak RSS in MB, its standard
    output when `stdout` is PIPE)."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %P %M", *map(str, command)],
        cwd=cwd,
        env=environment,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    match = re.search(r"TIME (\S+) (\S+)% (\d+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"{command} failed: {done.stderr[-2000:]}")
    return wall, match[2], int(match[3]) // 1024, done.stdout


def verify_rate(environment: dict, report: Report) -> float:
    """The rate over the rows verify checked: the loaded ones, and those the earlier runs of
    the benchmark added (with --reuse); rows/s."""
    command = [BIN / "flask", "audit", "verify"]
    wall, cpu, peak, verdict = timed_command(command, environment, stdout=subprocess.PIPE)
    rows = int(re.search(r"intact: (\d+) rows", verdict)[1])
    report.line(
        f"flask audit verify (database): {rows:,} rows in {wall:.1f} s = {rows / wall:,.0f}"
        f" rows/s  (CPU {cpu}%, peak RSS {peak} MB)"
    )
    return rows / wall


# Rows of the middle of the trail that pass_ceiling times the fast pass's query over.
CEILING_ROWS = 200_000


def pass_ceiling(url: str, rate: float, report: Report) -> None:
    """What PostgreSQL alone costs a row in verify's fast pass (`segment_scan.select`, read to
    its end, nothing done with it) on one core, set up as a segment runs it (JIT and sorts
    off) and without parallel workers: the faster of two runs. Verify's segments keep every
    core busy, so its rate cannot pass the cores over that cost, whatever Python does."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        head = verification.tree_size(connection)
        first = connection.scalar(sa.select(sa.func.min(Log.id)))  # after a purge, not 1
        a = max(first + 1, (first + head) // 2 - CEILING_ROWS // 2)
        b = min(head, a + CEILING_ROWS - 1)
        prev_hash = connection.scalar(sa.select(Log.hash).where(Log.id == a - 1))
        select = segment_scan.select(connection, a, b, prev_hash)
        driver = connection.connection.driver_connection
        driver.execute("SET jit = off; SET enable_sort = off")
        driver.execute("SET max_parallel_workers_per_gather = 0")
        options = export.COPY_OPTIONS["ndjson"]  # as segment_scan.scan reads it
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            with driver.cursor().copy(f"COPY ({select}) TO STDOUT ({options})") as copy:
                for _ in copy:
                    pass
            runs.append((time.perf_counter() - started) / (b - a + 1))
    engine.dispose()
    cores = len(os.sched_getaffinity(0))
    ceiling = cores / min(runs)
    report.line(
        f"the fast pass's query alone (PostgreSQL, one core, rows {a:,}-{b:,}):"
        f" {min(runs) * 1e6:.1f} us a row (runs: {', '.join(f'{run * 1e6:.1f}' for run in runs)});"
        f" at most {ceiling:,.0f} rows/s on {cores} cores: verify reached {rate / ceiling:.0%}"
    )


# Requests of each route sent first and not counted. A fresh server's first requests of a
# route carry each PostgreSQL backend's first plans of its statements (on the 2-core machine a
# worker's first proof took 46 ms, the next few dozen 12-15 ms against 9 after:
# docs/benchmarks.md), which a service that has run a while has made; they are printed apart.
WARMUP = 50


def proof_latency(server, options, report: Report) -> dict[str, float]:
    """Each route's p50 and p95 printed; the p95s (ms) returned, by route."""
    token = server.token(*ADMIN)
    bearer = {"Authorization": f"Bearer {token}"}
    status, body, _ = server.request("GET", "/v1/logs/tree-head", bearer)
    size = int(re.search(rb'"tree_size": ?(\d+)', body)[1])
    # The timed rows as before the warm-up was added; the warm-up's others, whose pages it
    # reads in place of theirs.
    timed_rows, warmup_rows = random.Random(7), random.Random(8)
    routes = {
        # An audited request that reads no trail, on the same server: what the proofs cost
        # beyond it, whatever the machine's speed.
        "GET /v1/me": lambda rng: "/v1/me",
        "GET /v1/logs/<id>/proof": lambda rng: f"/v1/logs/{rng.randint(1, size)}/proof",
        "GET /v1/logs/consistency": lambda rng: (
            f"/v1/logs/consistency?first={rng.randint(1, size)}&second={size}"
        ),
    }

    def timed(path: str) -> float:
        started = time.perf_counter()
        status, _, _ = server.request("GET", path, bearer)
        assert status == 200, status
        return time.perf_counter() - started  # seconds, as percentile() takes

    p95s = {}
    for name, path in routes.items():
        warmup = [timed(path(warmup_rows)) for _ in range(WARMUP)]
        timings = [timed(path(timed_rows)) for _ in range(options.requests)]
        p95s[name] = percentile(timings, 95)
        report.line(
            f"{name} at {size:,} rows: p50 {percentile(timings, 50):.1f} ms,"
            f" p95 {percentile(timings, 95):.1f} ms ({options.requests} requests; the"
            f" {WARMUP} before them: p50 {percentile(warmup, 50):.1f} ms,"
            f" largest {max(warmup) * 1000:.1f} ms)"
        )
    return p95s


def purge(environment: dict, before: str, report: Report) -> None:
    """`flask audit purge --before DATE --yes`, the minimum retention lowered to allow it."""
    environment = {**environment, "AUDIT_MIN_RETENTION_DAYS": "1"}
    command = [BIN / "flask", "audit", "purge", "--before", before, "--yes"]
    wall, _, _, _ = timed_command(command, environment)
    report.line(f"flask audit purge --before {before}: {wall:.1f} s")


def offline_rate(environment: dict, instance: Path, report: Report) -> None:
    """The offline verifier on an NDJSON export, its heads file beside it (with the purged
    rows' tree hashes after a purge)."""
    export, keys = instance / "trail.ndjson", instance / "keys.json"
    for path, command in ((export, "export"), (keys, "keys"), (Path(f"{export}.heads"), "heads")):
        with path.open("w") as out:
            subprocess.run([BIN / "flask", "audit", command], cwd=ROOT, env=environment, stdout=out)
    command = [sys.executable, "-m", "backend.audit.offline", "--file", export, "--keys", keys]
    wall, cpu, peak, verdict = timed_command(command, environment, stdout=subprocess.PIPE)
    rows = int(verdict.split()[1])  # `intact: N rows ...`
    report.line(
        f"offline verifier (python -m backend.audit.offline): {rows:,} rows in {wall:.1f} s"
        f" = {rows / wall:,.0f} rows/s  (CPU {cpu}%, peak RSS {peak} MB): {verdict.strip()}"
    )


if __name__ == "__main__":
    main()
