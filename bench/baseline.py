"""The yardstick #18 set verify's speed by: `flask audit verify` as it was when the issue was
filed (commit BASELINE), on BASELINE_ROWS rows, run on this machine beside today's.

#18 asks for 200,000 rows/s at 10M rows where that code made "about 41,000 rows/s at 1M" on
the machine the issue was written on: 4.88 times as fast. The machines these benchmarks run
on differ from one another by more than that (the same verify code made 205,000 rows/s on one
and 53,000-82,000 on others, docs/benchmarks.md), so the benchmark measures the issue's own
starting point here too and prints the ratio, which a machine's speed divides out of; and,
divided by how much slower than the issue's machine it ran here, the proofs' p95 (an
estimate of them on that machine, where #18 asks for under 10 ms).

The old code runs from a git worktree of BASELINE (the repository's history must hold it),
with this environment's Python packages, on its own database: the bench URL's name with
`_baseline`, created, migrated and loaded by the old code's own bench/load.py, and kept (with
--reuse, a database already holding the rows is verified as it is).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench import database

BASELINE = "9ba40ac"  # main on 5 December 2026 before #18's first commit (16bec66)
BASELINE_ROWS = 1_000_000
ISSUE_RATE = 41_000  # what #18 says BASELINE made at BASELINE_ROWS
TARGET_RATE = 200_000  # what #18 asks for at 10M rows
ROOT = Path(__file__).resolve().parent.parent

# Run in the worktree (its `bench` and `backend`): load the rows unless they are there, and
# print the environment its app runs with.
_PREPARE = """
import json, sys
from bench import database, load
url, instance, rows, reuse = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
settings = database.bench_settings(url, instance)
if not reuse:
    database.recreate(url)
    database.migrate(settings)
    key = settings["AUDIT_SIGNING_KEY"].encode()
    load.load(database.libpq_url(url), rows, key, settings["AUDIT_CHECKPOINT_EVERY"])
print(json.dumps(database.bench_environ(url, instance)))
"""


def ratio_line(rate: float, baselines: list[float]) -> str:
    """What today's rate is against the baseline's rates of the same run, and what #18 asks."""
    baseline = sum(baselines) / len(baselines)
    return (
        f"against the issue's yardstick: {BASELINE}'s verify at {BASELINE_ROWS:,} rows made"
        f" {', '.join(f'{one:,.0f}' for one in baselines)} rows/s here (about {ISSUE_RATE:,} on"
        f" the machine #18 was filed on: this one {_slower(baselines):.2f} times as slow);"
        f" verify above is {rate / baseline:.2f} times it, where #18's {TARGET_RATE:,} rows/s"
        f" is {TARGET_RATE / ISSUE_RATE:.2f} times"
    )


def _slower(baselines: list[float]) -> float:
    """How many times slower than the issue's machine the yardstick ran here."""
    return ISSUE_RATE / (sum(baselines) / len(baselines))


def paced_line(p95s: dict[str, float], baselines: list[float]) -> str:
    """The routes' p95 (ms) divided by how much slower than the issue's machine the yardstick
    ran here: an estimate of them on that machine, where #18 asks for proofs under 10 ms. It
    holds as far as their time is CPU, as it is on the benchmark's machines (docs/benchmarks.md)."""
    slower = _slower(baselines)
    paced = ", ".join(f"{name} {p95 / slower:.1f} ms" for name, p95 in p95s.items())
    return f"p95 at the pace of the machine #18 was filed on (these / {slower:.2f}): {paced}"


def baseline_rate(url: str, reuse: bool, timed_command) -> float:
    """BASELINE's `flask audit verify` over BASELINE_ROWS rows on this machine, rows/s
    (`timed_command`: bench.verify's, run in the worktree)."""
    name = urlsplit(url).path.lstrip("/") + "_baseline"
    url = database.with_database(url, name)
    instance = tempfile.mkdtemp(prefix="audit-bench-baseline-")
    try:
        with worktree(BASELINE) as tree:
            environment = {**os.environ, "PYTHONPATH": str(tree)}
            reuse = reuse and _holds_rows(url)
            arguments = [url, instance, str(BASELINE_ROWS), str(int(reuse))]
            prepared = subprocess.run(
                [sys.executable, "-c", _PREPARE, *arguments],
                cwd=tree,
                env=environment,
                capture_output=True,
                text=True,
            )
            if prepared.returncode != 0:
                raise RuntimeError(f"{BASELINE}'s load failed: {prepared.stderr[-2000:]}")
            environment |= json.loads(prepared.stdout.splitlines()[-1])
            command = [Path(sys.executable).parent / "flask", "audit", "verify"]
            wall, _, _, verdict = timed_command(
                command, environment, stdout=subprocess.PIPE, cwd=tree
            )
    finally:
        shutil.rmtree(instance, ignore_errors=True)
    if f"intact: {BASELINE_ROWS} rows" not in verdict:
        raise RuntimeError(f"{BASELINE}'s verify: {verdict}")
    return BASELINE_ROWS / wall


def _holds_rows(url: str) -> bool:
    try:
        with psycopg.connect(database.libpq_url(url)) as connection:
            return connection.execute("SELECT max(id) FROM audit_log").fetchone()[0] == (
                BASELINE_ROWS
            )
    except psycopg.Error:  # no such database yet, or no table
        return False


@contextmanager
def worktree(commit: str):
    """A checkout of `commit` beside the repository, removed after."""
    path = Path(tempfile.mkdtemp(prefix="audit-bench-baseline-tree-")) / "tree"
    git = ["git", "-C", str(ROOT)]
    added = subprocess.run(
        [*git, "worktree", "add", "--detach", str(path), commit], capture_output=True, text=True
    )
    if added.returncode != 0:  # e.g. a shallow clone, without the commit
        raise RuntimeError(f"no worktree of {commit}: {added.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path.parent, ignore_errors=True)
