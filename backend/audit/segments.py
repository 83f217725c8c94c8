"""`flask audit verify` on every core: the trail cut into segments, each walked by a process of
its own with its own PostgreSQL connection, all reading one snapshot (the verifying
transaction's, exported with pg_export_snapshot).

A segment from row `a` starts from what the database says came before it: the stored `hash`
of row `a - 1` and the tree's stored hashes of rows 1 to `a - 1`. Both are then proved by the
segment before, which recomputes row `a - 1`'s hash and ends on the tree it grew: its frontier
must be the next segment's starting one. So the segments together check exactly what one walk
checks, and each checks the signed tree heads that fall inside it.
"""

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import closing

import psycopg
import sqlalchemy as sa
from psycopg import sql

from backend.audit import export, merkle, segment_scan
from backend.audit.tree_check import TreeBroken, TreeCheck, stored_frontier
from backend.models import Log

# Below this many rows a single walk is done before the processes would have started.
MIN_ROWS = 200_000
BATCH = 5000


def default_workers() -> int:
    """One process a core this process may use."""
    return len(os.sched_getaffinity(0))


def worth_it(connection: sa.Connection, workers: int, rows: int) -> bool:
    """Whether to walk in segments: PostgreSQL, more than one worker, and MIN_ROWS rows."""
    return connection.dialect.name == "postgresql" and workers > 1 and rows >= MIN_ROWS


def walk(
    connection, workers, first_id, head, prev_hash, signed, tree: TreeCheck, progress, versions
) -> int:
    """verification.walk over rows `first_id`..`head`, in `workers` processes; how many rows
    (Broken: the first row any segment found broken; a tree's finding goes to `tree.broken`;
    `versions` gets where the chain's version changes)."""
    from backend.audit.verification import Broken  # the one walk's own exception

    bounds = _bounds(first_id, head, workers)
    url, snapshot = shared_snapshot(connection)
    starts = [tree.frontier] + [stored_frontier(connection, a - 1) for a, _ in bounds[1:]]
    ends = [merkle.pack(start) for start in starts[1:]] + [_stored_end(connection, head)]
    jobs = []
    for (a, b), frontier, end in zip(bounds, starts, ends, strict=True):
        start_hash = prev_hash if a == first_id else _stored_hash(connection, a - 1)
        in_range = {row: value for row, value in signed.items() if a <= row <= b}
        roots = {size: root for size, root in tree.roots.items() if a <= size <= b}
        job = (
            url,
            snapshot,
            segment_scan.select(connection, a, b, start_hash),
            rows_select(connection, (a, b)),
            a,
            b,
            start_hash,
            in_range,
            roots,
            frontier,
            end,
        )
        jobs.append(job)
    results = in_processes(_segment, jobs, progress)
    broken = [result["broken"] for result in results if "broken" in result]
    for (a, b), result in zip(bounds[:-1], results, strict=False):
        if "rows" in result and result["rows"] < b - a + 1:  # the next row was deleted
            broken.append((a + result["rows"], "missing: the row was deleted"))
    broken += _join_versions(results, versions)
    if broken:
        raise Broken(*min(broken))
    beyond = connection.scalar(sa.select(sa.func.min(Log.id)).where(Log.id > head))
    if beyond is not None:
        raise Broken(beyond, f"beyond the chain's head (row {head}): inserted without the writer")
    _join_trees(results, starts, bounds, tree)
    return sum(result["rows"] for result in results)


def _bounds(first_id: int, head: int, workers: int) -> list[tuple[int, int]]:
    """`workers` ranges of ids of about the same length, together first_id..head."""
    step = -(-(head - first_id + 1) // workers)
    return [(a, min(head, a + step - 1)) for a in range(first_id, head + 1, step)]


def _stored_end(connection: sa.Connection, head: int) -> str | None:
    """The stored tree's frontier of the whole trail, packed, which the last segment's fast
    pass must end on; None when the stored hashes cannot make it (the walk then says what
    is wrong)."""
    try:
        return merkle.pack(stored_frontier(connection, head))
    except TreeBroken:
        return None


def _stored_hash(connection: sa.Connection, row_id: int) -> str:
    return connection.scalar(sa.select(Log.hash).where(Log.id == row_id))


def shared_snapshot(connection: sa.Connection) -> tuple[str, str]:
    """(libpq URL, snapshot id) for processes to read what `connection`'s transaction sees."""
    snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    url = connection.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return url, snapshot


def in_processes(function: Callable, jobs: list, progress: Callable[[int], None]) -> list:
    """`function` of each job, a process each (spawned: no inherited connection, no shared
    socket); `progress` moved by what they `count`."""
    context = multiprocessing.get_context("spawn")
    done = context.Value("q", 0)
    with context.Pool(len(jobs), initializer=_share, initargs=(done,)) as pool:
        pending = pool.map_async(function, jobs)
        _follow(pending, done, progress)
        return pending.get()


def _follow(pending, done, progress: Callable[[int], None]) -> None:
    """Move the progress bar as the processes count their rows."""
    shown = 0
    while not pending.ready():
        pending.wait(0.2)
        now = done.value
        progress(now - shown)
        shown = now


def _join_versions(results: list[dict], versions: list[list[int]]) -> list[tuple[int, str]]:
    """The segments' version changes as one walk notes them; a version going down where two
    segments meet is broken there."""
    for result in results:
        for version, first in result.get("versions", []):
            if versions and version < versions[-1][0]:
                return [
                    (
                        first,
                        f"chain version {version} after version {versions[-1][0]}:"
                        " versions only go up",
                    )
                ]
            if not versions or version != versions[-1][0]:
                versions.append([version, first])
    return []


def _join_trees(results: list[dict], starts: list, bounds: list, tree: TreeCheck) -> None:
    """Each segment must end on the tree the next one started from. A signed head the rows do
    not hash to is named first, as one walk names it (a rewritten row shows at the next
    segment's start too, since the stored tree is the one the heads signed)."""
    findings = [result["tree_broken"] for result in results if result.get("tree_broken")]
    if not findings:
        for (a, _), result, start in zip(bounds[1:], results, starts[1:], strict=False):
            if result["frontier"] != merkle.pack(start):
                findings.append((a, "the Merkle tree's stored hashes disagree with the rows"))
    tree.size = bounds[-1][1]
    tree.frontier = merkle.unpack(results[-1]["frontier"])
    if findings and not tree.broken:
        tree.broken = TreeBroken(*min(findings))


# -- in each process --------------------------------------------------------------------------

_done = None


def _share(done) -> None:
    global _done
    _done = done


def _segment(job: tuple) -> dict:
    """Walk rows a..b of the snapshot; what it found."""
    from backend.audit.verification import Broken, walk

    url, snapshot, scanned, select, a, b, prev_hash, signed, roots, frontier, end = job
    tree = TreeCheck(roots, a - 1, list(frontier))
    versions: list[list[int]] = []
    with psycopg.connect(url) as connection:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        connection.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        # The rows in id order from the primary key, never sorted: the planner, costing the
        # per-row hashing, may otherwise prefer a sequential scan and a sort of millions.
        connection.execute("SET LOCAL enable_sort = off")
        # The per-row hashing makes the plan look costly enough for JIT, whose compilation of
        # that expression took longer than the whole pass (39 s for 3,000 rows).
        connection.execute("SET LOCAL jit = off")
        found = segment_scan.scan(
            connection, scanned, (a, b), signed, roots, list(frontier), count, end
        )
        if found is not None:
            return found
        try:
            # Closed before the transaction ends: a COPY left half read (the walk stopped at a
            # broken row) is cancelled, or the COMMIT waits on it for ever.
            with closing(batches_of(connection, select)) as batches:
                rows = walk(batches, a, b, prev_hash, signed, tree, count, versions)
        except Broken as broken:
            return {"broken": (broken.row, broken.problem)}
    found = (tree.broken.row, tree.broken.problem) if tree.broken else None
    return {
        "rows": rows,
        "frontier": merkle.pack(tree.frontier),
        "tree_broken": found,
        "versions": versions,
    }


def rows_select(connection: sa.Connection, ids: tuple[int, int] | None = None) -> str:
    """The export's NDJSON lines (audit/export.py) of rows a..b (`ids`; else every row) in id
    order, as SQL for COPY: PostgreSQL writes each row's JSON in C, and json.loads reads it in
    C, several times faster than a cursor's rows made into dicts in Python; and the time is
    the export's text, which keeps the era of one before year 1 (no datetime holds it)."""
    query = export.statement({}, None, "postgresql", "ndjson")
    if ids is not None:
        query = query.where(Log.id.between(*ids))
    query = query.order_by(None).order_by(Log.id)
    return export.copy_select(connection.connection.driver_connection, query, connection.dialect)


def batches_of(connection: psycopg.Connection, select: str) -> Iterator[list[dict]]:
    """The rows of `rows_select`'s COPY, a batch at a time, as dicts."""
    options = export.COPY_OPTIONS["ndjson"]
    with connection.cursor().copy(f"COPY ({select}) TO STDOUT ({options})") as copy:
        batch = []
        for line in copy:
            batch.append(json.loads(bytes(line)))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def count(done: int) -> None:
    """In a process of `in_processes`: `done` more rows (or leaves) for the progress bar."""
    with _done.get_lock():
        _done.value += done
