"""The write ceiling: durable appends per second through the app's own audit writer.

    .venv/bin/python -m bench.write_ceiling [--processes 1,2,4,8] [--threads 1,8]
                                            [--duration 10] [--url URL]

Every app process on every machine appends through one lock, the chain's head row, so the
trail's durable append rate is shared by all of them. This measures it: for each count of
writer processes (separate OS processes, as gunicorn workers or app servers are), each with
`--threads` threads submitting events at once (a worker's concurrent requests, which the
writer's group commit puts in one transaction; 1 thread: one event a transaction), every
event made durable (`synchronous_commit` on; the server's settings are printed) through
`AuditWriter.write`, the code path of every audited request.

Prints, per run: appends and transactions per second, the mean and largest batch (events a
transaction), the chain lock's hold time per transaction (from the locked head row's arrival
to the COMMIT's return: linking, the INSERTs, the flush to disk) and the wait before it (the
BEGIN and SELECT ... FOR UPDATE round trip, queueing behind the other processes), p50 and
p95, and "lock busy": the holds' sum over the run's time (near or past 100%: saturated; past
it, as the hold's end is timed in the client, after the server has let the lock go). The
database of URL (default BENCH_DATABASE_WRITES_URL, else `audit_bench_writes` of the local
server as the `audit` role) is dropped and created; its role needs CREATEDB. Results go to
bench/results/write-ceiling.json.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.database import bench_settings, libpq_url, migrate, recreate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_URL = "postgresql://audit:audit@127.0.0.1:5432/audit_bench_writes"
SETTLE = 2.0  # seconds between two runs, and from the processes' start to the timed run
TRACK = "bench: a durable append of typical size, " + "x" * 60


def main() -> None:
    options = parse_args()
    url = options.url
    recreate(url)
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        migrate(bench_settings(url, tmp))
        server = server_settings(url)
        print(", ".join(f"{name} = {value}" for name, value in server.items()))
        results = []
        for threads in options.threads:
            print(f"\n{threads} thread(s) a process; times in ms\n{HEADER}")
            for processes in options.processes:
                result = run(url, tmp, processes, threads, options.duration)
                results.append(result)
                print_row(result)
                time.sleep(SETTLE)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "write-ceiling.json"
    path.write_text(json.dumps({"server": server, "runs": results}, indent=2))
    print(f"\nwritten to {path.relative_to(ROOT)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes",
        type=counts,
        default=[1, 2, 4, 8],
        help="comma-separated counts of writer processes (default 1,2,4,8)",
    )
    parser.add_argument(
        "--threads",
        type=counts,
        default=[1, 8],
        help="comma-separated counts of submitting threads a process (default 1,8)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds a run")
    parser.add_argument(
        "--url",
        default=os.environ.get("BENCH_DATABASE_WRITES_URL", DEFAULT_URL),
        help="the database to drop, create and fill (its role needs CREATEDB)",
    )
    return parser.parse_args()


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def server_settings(url: str) -> dict[str, str]:
    """The server settings that decide what a durable commit costs."""
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
    with psycopg.connect(libpq_url(url)) as connection:
        return {name: connection.execute(f"SHOW {name}").fetchone()[0] for name in names}


def run(url: str, instance: str, processes: int, threads: int, duration: float) -> dict:
    """One run: `processes` writer processes started together; their merged figures."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a worker is
    results = context.Queue()
    start_at = time.time() + SETTLE + processes * 0.5  # after every process has booted
    workers = [
        context.Process(
            target=writer_process, args=(url, instance, threads, start_at, duration, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=start_at - time.time() + duration + 60) for _ in workers]
    for worker in workers:
        worker.join()
    return summary(processes, threads, duration, reports)


def summary(processes: int, threads: int, duration: float, reports: list[dict]) -> dict:
    appends = sum(report["appends"] for report in reports)
    batches = [size for report in reports for size in report["batches"]]
    holds = [ms for report in reports for ms in report["holds"]]
    waits = [ms for report in reports for ms in report["waits"]]
    return {
        "processes": processes,
        "threads": threads,
        "appends_per_s": appends / duration,
        "transactions_per_s": len(batches) / duration,
        "mean_batch": statistics.fmean(batches) if batches else 0.0,
        "max_batch": max(batches, default=0),
        "hold_ms_p50": percentile(holds, 50),
        "hold_ms_p95": percentile(holds, 95),
        "wait_ms_p50": percentile(waits, 50),
        "wait_ms_p95": percentile(waits, 95),
        "lock_busy": sum(holds) / 1000 / duration,
    }


def percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[pct - 1]


HEADER = (
    f"{'processes':>9} {'appends/s':>10} {'commits/s':>10} {'batch':>6} {'max':>4}"
    f" {'hold p50':>9} {'hold p95':>9} {'wait p50':>9} {'wait p95':>9} {'lock busy':>9}"
)


def print_row(result: dict) -> None:
    print(
        f"{result['processes']:>9} {result['appends_per_s']:>10.0f}"
        f" {result['transactions_per_s']:>10.0f} {result['mean_batch']:>6.1f}"
        f" {result['max_batch']:>4} {result['hold_ms_p50']:>9.2f} {result['hold_ms_p95']:>9.2f}"
        f" {result['wait_ms_p50']:>9.2f} {result['wait_ms_p95']:>9.2f}"
        f" {result['lock_busy']:>9.0%}"
    )


def writer_process(url, instance, threads, start_at, duration, results) -> None:
    """One app process: `threads` threads appending through its writer from `start_at` for
    `duration` seconds; puts its counts and the chain lock's timings on `results`."""
    from backend import create_app
    from backend.audit.events import AuditEvent

    app = create_app(bench_settings(url, instance))
    writer = app.extensions["audit_writer"]
    timings = instrument_chain()
    writer.write(AuditEvent(source="app", event="bench.warmup", level="INFO", track=TRACK))
    counts = [0] * threads
    time.sleep(max(0.0, start_at - time.time()))
    timings.clear()
    deadline = time.monotonic() + duration

    def append(number: int) -> None:
        while time.monotonic() < deadline:
            event = AuditEvent(source="app", event="bench.write", level="INFO", track=TRACK)
            if writer.write(event) is None:
                sys.exit("an append was spooled: the database refused it")
            counts[number] += 1

    pool = [threading.Thread(target=append, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(
        {
            "appends": sum(counts),
            "batches": [size for size, _, _ in timings],
            "waits": [wait for _, wait, _ in timings],
            "holds": [hold for _, _, hold in timings],
        }
    )


def instrument_chain() -> list[tuple[int, float, float]]:
    """Time each append's transaction (batch size, wait for the head, hold of its lock, in
    ms) by wrapping the chain's functions: `more` (the group commit's, which takes in the
    events that queued meanwhile) or else `link` runs as soon as the locked head row has
    arrived, and `append_and_commit` returns once the COMMIT has."""
    from backend.audit import chain

    timings: list[tuple[int, float, float]] = []
    link, append_and_commit = chain.link, chain.append_and_commit
    locked = threading.local()

    def head_arrived() -> None:
        if locked.at is None:
            locked.at = time.perf_counter()

    def timed_link(*args, **kwargs):
        head_arrived()
        return link(*args, **kwargs)

    def timed_append_and_commit(connection, events, *args, more=None, **kwargs):
        started, locked.at = time.perf_counter(), None
        if more is not None:
            more = _after(head_arrived, more)
        ids = append_and_commit(connection, events, *args, more=more, **kwargs)
        done = time.perf_counter()
        timings.append((len(events), (locked.at - started) * 1000, (done - locked.at) * 1000))
        return ids

    chain.link, chain.append_and_commit = timed_link, timed_append_and_commit
    return timings


def _after(first, function):
    """`function`, calling `first` before it."""

    def both(*args, **kwargs):
        first()
        return function(*args, **kwargs)

    return both


if __name__ == "__main__":
    main()
