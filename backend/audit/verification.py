"""Proving the trail intact; signing its head is anchors.py, retention is retention.py.

`verify` walks every row in id order and names the first one that breaks a promise:

- a missing id: a row was deleted;
- a `prev_hash` that is not the previous row's hash: rows were inserted, removed or moved;
- a `hash` that does not match the row's content: a field was changed;
- a chain version that is unknown, or lower than the row before it's (versions only go up: a
  row passed off as an older version would escape the newer version's fields);
- a row whose hash differs from a signed checkpoint (in the database, or in an anchor file
  kept elsewhere): the chain was recomputed by someone without AUDIT_SIGNING_KEY;
- a checkpoint whose signature is wrong: forged without the key;
- a row beyond the chain's head: inserted without the writer (which moves the head with it);
- a periodic checkpoint missing where the head's count or the spacing of the others puts one
  (backend/audit/cadence.py): deleted, with the chain recomputed after it, or with the tail;
- a signed tree head that is forged, contradicts another, or that the rows do not hash to
  (backend/audit/tree_check.py).

It reads one snapshot (`snapshot`): rows and checkpoints committed while it walks are not
mistaken for tampering.

Rows after the last signed checkpoint are only as safe as the database (`caveat` says so):
`flask audit anchor` signs the head on demand and writes the checkpoints to a file to keep
outside it.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa

from backend.audit import cadence, chain, segments, stored_tree
from backend.audit.tree_check import TreeBroken, TreeCheck
from backend.concurrency import pause
from backend.models import AuditChain, Checkpoint, Log


@dataclass
class Verdict:
    """What `verify` found: intact or not, the first broken row, and what it walked."""

    intact: bool
    rows: int
    first_id: int | None
    last_id: int | None
    signed_up_to: int | None
    broken_row: int | None = None
    problem: str | None = None
    # Where each chain version begins: [[version, first row], ...] in row order.
    versions: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class Broken(Exception):
    def __init__(self, row: int, problem: str):
        super().__init__(f"row {row}: {problem}")
        self.row = row
        self.problem = problem


# Rows checked between two pauses for the worker's other requests (backend.concurrency).
PAUSE_EVERY = 1000


def verify(
    connection: sa.Connection,
    key: bytes,
    anchors: Iterable[dict] = (),
    progress: Callable[[int], None] = lambda n: None,
    checkpoint_every: int | None = None,
    own_key=None,
    workers: int = 1,
    tree_stored: bool = False,
) -> Verdict:
    """Walk the whole trail and return the verdict (never raises for a broken trail).
    `checkpoint_every`: AUDIT_CHECKPOINT_EVERY, how far apart periodic checkpoints are due;
    `own_key`: the service's tree-head key (notes.VerifierKey), trusted besides those listed;
    `workers`: processes that walk segments of the trail at once (PostgreSQL, segments.py);
    `tree_stored`: then check every stored hash and tile of the tree too (stored_tree.py),
    `progress` counting its leaves after the rows."""
    head, since, frontier = connection.execute(
        sa.select(AuditChain.last_id, AuditChain.since_checkpoint, AuditChain.tree_frontier).where(
            AuditChain.id == 1
        )
    ).one()
    first_id = connection.scalar(sa.select(sa.func.min(Log.id)))
    verdict = Verdict(intact=True, rows=0, first_id=first_id, last_id=None, signed_up_to=None)
    try:
        signed, purges = _signed_positions(connection, key, anchors)
        prev_hash = _start(first_id, head, signed, purges)
        tree = TreeCheck.from_database(connection, first_id, own_key)
        walked = (first_id, head, prev_hash, signed, tree, progress, verdict.versions)
        if first_id and segments.worth_it(connection, workers, head - first_id + 1):
            verdict.rows = segments.walk(connection, workers, *walked)
        else:
            # Closed before the snapshot's transaction ends: a COPY left half read (the walk
            # stopped at a broken row) is cancelled, or the ROLLBACK waits on it.
            with closing(_rows(connection)) as rows:
                verdict.rows = walk(rows, *walked)
        expected_id = (first_id or 1) + verdict.rows
        verdict.last_id = expected_id - 1 if verdict.rows else None
        if head and verdict.last_id != head:
            after = verdict.last_id or 0
            raise Broken(
                after + 1, f"missing: the chain's head is row {head}, the table ends at row {after}"
            )
        beyond = [log_id for log_id in signed if log_id > head]
        if beyond:
            raise Broken(head + 1, f"missing: a signed checkpoint names row {min(beyond)}")
        missing = cadence.missing_checkpoint(_periodic(connection), head, since, checkpoint_every)
        if missing:
            raise Broken(*missing)
        tree.finish(frontier)
        if tree_stored:
            stored_tree.check(connection, head or 0, tree.frontier, progress, workers)
        verdict.signed_up_to = max((i for i in signed if first_id and i >= first_id), default=None)
    except (Broken, TreeBroken) as broken:
        verdict.intact, verdict.broken_row, verdict.problem = False, broken.row, broken.problem
    return verdict


def walk(
    batches: Iterable[list[dict]],
    first_id: int | None,
    head: int,
    prev_hash: str,
    signed: dict,
    tree: TreeCheck,
    progress: Callable[[int], None],
    versions: list[list[int]],
) -> int:
    """Check `batches` of rows, which must be rows `first_id`, `first_id + 1`... in order,
    each following `prev_hash` and then the one before; return how many (Broken: the first
    that breaks a promise). `versions` gets where the chain's version changes."""
    expected_id = first_id
    for batch in batches:
        for row in batch:
            if row["id"] != expected_id:
                raise Broken(expected_id, "missing: the row was deleted")
            if row["id"] > head:
                raise Broken(
                    row["id"], f"beyond the chain's head (row {head}): inserted without the writer"
                )
            check_version(row, versions)
            _check_row(row, prev_hash, signed)
            tree.add(row["id"], row["hash"])
            prev_hash = row["hash"]
            expected_id += 1
            if (expected_id - first_id) % PAUSE_EVERY == 0:
                pause()
        progress(len(batch))
    return expected_id - first_id if first_id else 0


def _signed_positions(
    connection: sa.Connection, key: bytes, anchors: Iterable[dict]
) -> tuple[dict[int, str], set[int]]:
    """({log_id: log_hash} of every checkpoint and anchor, the log_ids signed by a purge), each
    checkpoint checked against the key."""
    stored = connection.execute(
        sa.select(
            Checkpoint.log_id, Checkpoint.log_hash, Checkpoint.reason, Checkpoint.mac
        ).order_by(Checkpoint.log_id)
    ).mappings()
    signed: dict[int, str] = {}
    purges: set[int] = set()
    for source, entries in (("checkpoint", stored), ("anchor", anchors)):
        for entry in entries:
            log_id, log_hash, reason = int(entry["log_id"]), entry["log_hash"], entry["reason"]
            if entry["mac"] != chain.checkpoint_mac(key, log_id, log_hash, reason):
                raise Broken(
                    log_id,
                    f"the {source} for this row is not signed with"
                    " AUDIT_SIGNING_KEY (forged, or the wrong key)",
                )
            if signed.setdefault(log_id, log_hash) != log_hash:
                raise Broken(log_id, f"the {source} for this row disagrees with another one")
            if reason == "purge":
                purges.add(log_id)
    return signed, purges


def _periodic(connection: sa.Connection) -> list[int]:
    """The rows of the periodic checkpoints, ascending (signatures checked by the caller)."""
    return list(
        connection.scalars(
            sa.select(Checkpoint.log_id)
            .where(Checkpoint.reason == "periodic")
            .order_by(Checkpoint.log_id)
        )
    )


def _start(first_id: int | None, head: int, signed: dict, purges: set[int]) -> str:
    """The hash the first remaining row must follow: genesis, or a signed purge checkpoint."""
    if first_id is None:
        if head:
            raise Broken(1, f"missing: the table is empty but the chain's head is row {head}")
        return chain.GENESIS
    if first_id == 1:
        return chain.GENESIS
    if first_id - 1 not in purges:
        raise Broken(
            first_id - 1,
            "missing: rows before the first one were deleted without a"
            " purge (no signed purge checkpoint vouches for them)",
        )
    return signed[first_id - 1]


def check_version(row: dict, versions: list[list[int]]) -> None:
    """Note where the chain's version changes; a version goes up only, to one this code knows."""
    version = row.get("chain_version") or 1
    if version not in chain.HASHED_FIELDS_OF:
        raise Broken(row["id"], f"unknown chain version {version}")
    if versions and version < versions[-1][0]:
        raise Broken(
            row["id"],
            f"chain version {version} after version {versions[-1][0]}: versions only go up",
        )
    if not versions or version != versions[-1][0]:
        versions.append([version, row["id"]])


def _check_row(row: dict, prev_hash: str, signed: dict) -> None:
    if row["prev_hash"] != prev_hash:
        raise Broken(
            row["id"], "does not follow the row before it: rows were inserted, removed or reordered"
        )
    if chain.row_hash(row, row["prev_hash"]) != row["hash"]:
        raise Broken(row["id"], "altered: its hash does not match its content")
    if row["id"] in signed and signed[row["id"]] != row["hash"]:
        raise Broken(
            row["id"],
            "differs from its signed checkpoint: the chain was recomputed"
            " without AUDIT_SIGNING_KEY",
        )


def _rows(connection: sa.Connection, batch: int = 5000) -> Iterator[list[dict]]:
    """Every row, in id order, a batch at a time: on PostgreSQL as the segments read theirs
    (`segments.rows_select`), else from a server-side cursor; closed even when the walk stops
    at a broken row."""
    if connection.dialect.name == "postgresql":
        select = segments.rows_select(connection)
        with closing(segments.batches_of(connection.connection.driver_connection, select)) as rows:
            yield from rows
        return
    with connection.execution_options(yield_per=batch).execute(
        sa.select(Log.__table__).order_by(Log.id)
    ) as result:
        for partition in result.mappings().partitions():
            yield [dict(row) for row in partition]


@contextmanager
def snapshot(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection whose reads all see the trail as of one moment, as `verify` needs: on
    PostgreSQL one REPEATABLE READ transaction (else rows and checkpoints committed between its
    queries look like tampering); on SQLite one read transaction. Pass the
    request engine, not the writer's: on SQLite that one takes the write lock at BEGIN, and
    a long walk would hold every writer up."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        else:  # pysqlite opens no transaction for reads: one deferred BEGIN, one WAL snapshot
            connection.exec_driver_sql("BEGIN")
        yield connection


def tree_size(connection: sa.Connection) -> int:
    """How many leaves the tree has (the chain's head: purged rows' leaves too)."""
    return connection.scalar(sa.select(AuditChain.last_id).where(AuditChain.id == 1)) or 0


def row_count(connection: sa.Connection) -> int:
    """How many rows `verify` will walk, for a progress bar: the span of the ids, which are
    gapless unless rows were deleted (two index reads, where count(*) would read the table
    once more before verify reads it again)."""
    first, last = connection.execute(sa.select(sa.func.min(Log.id), sa.func.max(Log.id))).one()
    return 0 if first is None else last - first + 1


def describe(verdict: Verdict) -> str:
    """One line for people: intact, or the first broken row and why."""
    if verdict.intact:
        count = f"{verdict.rows} row{'' if verdict.rows == 1 else 's'}"
        span = f"rows {verdict.first_id}-{verdict.last_id}" if verdict.rows else "no rows"
        if verdict.rows and verdict.first_id > 1:  # _start checked the purge's checkpoint
            span += f", after the signed purge of rows 1-{verdict.first_id - 1}"
        signed = (
            f"signed up to row {verdict.signed_up_to}"
            if verdict.signed_up_to
            else "none signed since"
            if verdict.rows and verdict.first_id > 1
            else "no signed checkpoint yet"
        )
        return f"intact: {count} ({span}), {signed}{_versions(verdict)}"
    return f"BROKEN at row {verdict.broken_row}: {verdict.problem}"


def _versions(verdict: Verdict) -> str:
    """`; chain version 1 for rows 1-9, version 2 from row 10` when the version changes."""
    if len(verdict.versions) < 2:
        return ""
    spans = []
    for (version, first), following in zip(
        verdict.versions, [*verdict.versions[1:], [None, verdict.last_id + 1]], strict=True
    ):
        last = following[1] - 1
        spans.append(f"version {version} for row{'' if first == last else 's'} {first}")
        if first != last:
            spans[-1] += f"-{last}"
    return "; chain " + ", ".join(spans)


def caveat(verdict: Verdict) -> str | None:
    """One line on what an intact verdict cannot vouch for: its rows after the last signed
    checkpoint, which someone who can write the database could have deleted, moving the head
    back (None when every row is signed, or the trail is broken anyway)."""
    if not verdict.intact or not verdict.rows or verdict.signed_up_to == verdict.last_id:
        return None
    first = (verdict.signed_up_to or verdict.first_id - 1) + 1
    rows = (
        f"row {first}, after the last signed checkpoint, is"
        if first == verdict.last_id
        else f"rows {first}-{verdict.last_id}, after the last signed checkpoint, are"
    )
    return (
        f"note: {rows} only as safe as the database: keep a signed checkpoint outside it"
        " (flask audit anchor)"
    )
