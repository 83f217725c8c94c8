"""Benchmark: what a migration of the audit table costs a live trail of N rows: 0008 (the
structured record) by default, 0012 (time partitions) with `--from 0011`.

    .venv/bin/python -m bench.migration [--rows 10000000] [--url URL] [--verify]
                                        [--from 0007] [--months 12]

Creates the database of URL (dropping it first; default `audit_bench_migration`, as the
`audit` role, which needs CREATEDB), migrates it to FROM, loads N rows over `--months` months
(bench/load.py; of chain version 1 before 0008, as a trail written before the upgrade), then
runs `flask db upgrade` while two probes ask for the audit table's locks every 10 ms: an
append's (ROW EXCLUSIVE) and a read's (ACCESS SHARE), each taken and given back, so the
longest probe is the longest time an audited request, or a reader of the trail, would have
waited on the migration. It prints the upgrade's time, those waits, the table's size (with its
indexes) before and after, then appends rows through the app's own writer and, with
`--verify`, walks the whole trail.
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
from backend.models import CHAIN_VERSION
from bench import database, load
from bench.query import load_average

DEFAULT_URL = "postgresql://audit:audit@127.0.0.1:5432/audit_bench_migration"
PROBE_EVERY = 0.01


class LockProbe:
    """A thread that takes and gives back a lock on audit_log (`mode`: an append's ROW
    EXCLUSIVE, a read's ACCESS SHARE) every PROBE_EVERY seconds, and keeps the longest wait."""

    def __init__(self, url: str, mode: str = "ROW EXCLUSIVE"):
        self.url = url
        self.mode = mode
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
                    connection.execute(f"LOCK TABLE audit_log IN {self.mode} MODE")
                self.longest = max(self.longest, time.perf_counter() - started)
                self.probes += 1


def table_size(url: str) -> int:
    """The trail's bytes with its indexes, its partitions' too."""
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT coalesce(sum(pg_total_relation_size(relid)),"
            " pg_total_relation_size('audit_log'))"
            " FROM pg_partition_tree('audit_log'::regclass)"
        ).fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--url", default=os.environ.get("BENCH_MIGRATION_DATABASE_URL", DEFAULT_URL)
    )
    parser.add_argument("--verify", action="store_true", help="walk the trail afterwards")
    parser.add_argument("--from", dest="start", default="0007", help="the revision upgraded from")
    parser.add_argument("--months", type=int, default=12, help="months the rows span")
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
        upgrade(revision=options.start)
    dispose_engines(app)
    version = 1 if options.start < "0008" else CHAIN_VERSION
    loaded = load.load(
        url,
        options.rows,
        settings["AUDIT_SIGNING_KEY"].encode(),
        settings["AUDIT_CHECKPOINT_EVERY"],
        version=version,
        tree=options.start >= "0009",
        months=options.months,
    )
    print(f"loaded {loaded.rows:,} rows of chain version {version} in {loaded.seconds:.0f} s")
    before = table_size(url)
    app = create_app(settings)
    with LockProbe(url) as append, LockProbe(url, "ACCESS SHARE") as read, app.app_context():
        started = time.perf_counter()
        upgrade()
        upgraded = time.perf_counter() - started
    print(f"flask db upgrade ({options.start} -> head): {upgraded:.1f} s")
    print(f"load average: {load_average()}")
    for name, probe in (("an append's", append), ("a read's", read)):
        print(
            f"longest wait of {name} lock during it: {probe.longest * 1000:.1f} ms"
            f" ({probe.probes} probes, every {PROBE_EVERY * 1000:.0f} ms)"
        )
    after = table_size(url)
    print(
        f"audit_log with its indexes: {before / 2**20:,.0f} MiB before,"
        f" {after / 2**20:,.0f} MiB after"
    )
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
