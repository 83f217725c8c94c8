"""Benchmark: what migration 0008 (the structured record) costs a live trail of N rows.

    .venv/bin/python -m bench.migration [--rows 10000000] [--url URL] [--verify]

Creates the database of URL (dropping it first; default `audit_bench_migration`, as the
`audit` role, which needs CREATEDB), migrates it to 0007, loads N rows of chain version 1
(bench/load.py, as a trail written before the upgrade), then runs `flask db upgrade` while a
writer probes the audit table every 10 ms: each probe takes the lock an append takes (ROW
EXCLUSIVE on audit_log) and gives it back, so the longest probe is the longest time an
audited request would have waited on the migration. It prints the upgrade's time, that wait,
the table's size before and after (no row rewritten: the same size), then appends rows of
chain version 2 through the app's own writer and, with `--verify`, walks the trail across
both versions.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import psycopg
from flask_migrate import upgrade

from backend import create_app, dispose_engines
from bench import database, load

DEFAULT_URL = "postgresql://audit:audit@127.0.0.1:5432/audit_bench_migration"
PROBE_EVERY = 0.01


class LockProbe:
    """A thread that takes and gives back an append's lock on audit_log every PROBE_EVERY
    seconds, and keeps the longest wait."""

    def __init__(self, url: str):
        self.url = url
        self.longest = 0.0
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LockProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self._stop.wait(PROBE_EVERY):
                started = time.perf_counter()
                with connection.transaction():
                    connection.execute("LOCK TABLE audit_log IN ROW EXCLUSIVE MODE")
                self.longest = max(self.longest, time.perf_counter() - started)
                self.probes += 1


def table_size(url: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT pg_table_size('audit_log')").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--url", default=os.environ.get("BENCH_MIGRATION_DATABASE_URL", DEFAULT_URL)
    )
    parser.add_argument("--verify", action="store_true", help="walk the trail afterwards")
    options = parser.parse_args()
    instance = tempfile.mkdtemp(prefix="audit-bench-migration-")
    try:
        run(options, database.bench_settings(options.url, instance))
    finally:
        shutil.rmtree(instance, ignore_errors=True)


def run(options, settings: dict) -> None:
    url = database.libpq_url(options.url)
    database.recreate(options.url)
    app = create_app(settings)
    with app.app_context():
        upgrade(revision="0007")
    dispose_engines(app)
    loaded = load.load(
        url,
        options.rows,
        settings["AUDIT_SIGNING_KEY"].encode(),
        settings["AUDIT_CHECKPOINT_EVERY"],
        version=1,
    )
    print(f"loaded {loaded.rows:,} rows of chain version 1 in {loaded.seconds:.0f} s")
    before = table_size(url)
    app = create_app(settings)
    with LockProbe(url) as probe, app.app_context():
        started = time.perf_counter()
        upgrade()
        upgraded = time.perf_counter() - started
    print(f"flask db upgrade (0007 -> 0008): {upgraded:.1f} s")
    print(
        f"longest wait of an append's lock during it: {probe.longest * 1000:.1f} ms"
        f" ({probe.probes} probes, every {PROBE_EVERY * 1000:.0f} ms)"
    )
    after = table_size(url)
    print(f"audit_log size: {before / 2**20:,.0f} MiB before, {after / 2**20:,.0f} MiB after")
    append_and_verify(app, options.verify)
    dispose_engines(app)


def append_and_verify(app, walk: bool) -> None:
    """Rows of chain version 2 after the old ones, through the app's writer; then, if `walk`,
    the whole trail verified (the verdict names where the version changes)."""
    from backend.audit import verification
    from backend.audit.events import AuditEvent
    from backend.audit.writer import writer
    from backend.extensions import db

    with app.app_context():
        for number in range(10):
            writer().write(
                AuditEvent(
                    source="system", event="bench.append", level="INFO", track=f"row {number}"
                )
            )
        if not walk:
            return
        started = time.perf_counter()
        with verification.snapshot(db.engine) as connection:
            verdict = verification.verify(
                connection, writer().key, checkpoint_every=writer().checkpoint_every
            )
        seconds = time.perf_counter() - started
    print(f"verify: {verification.describe(verdict)} ({seconds:.0f} s)")
    if not verdict.intact:
        sys.exit(1)


if __name__ == "__main__":
    main()
