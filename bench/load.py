"""Bulk-load a valid synthetic audit trail into a freshly migrated PostgreSQL database.

The rows look like a busy service's: mostly `/v1` requests, logins and their failures, a few
exceptions, a thousand users plus a service account and anonymous callers, a year of time.
They form a valid chain (ids 1..N, `created_at` never decreasing, uuid4 event ids, each hash
computed by `backend.audit.chain.row_hash`), signed checkpoints every AUDIT_CHECKPOINT_EVERY
rows, and the chain's head row points at the last one, so the live app appends after them.

Fast: rows are generated and hashed in this process and streamed to COPY (PostgreSQL parses
and stores them on the other core); the table's indexes are dropped first and rebuilt after,
two at a time, from their own definitions, and checked identical to what the migrations made.
"""

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa

from backend.audit import merkle, partitions, tiles
from backend.audit.chain import GENESIS, HASHED_FIELDS_OF, row_hash, sign
from backend.audit.events import outcome_for_status
from backend.models import CHAIN_VERSION

START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
# The trail ends where a year from START does; `months` longer ones start earlier.
END = START + SPAN
USERS = 1000
SERVICE_ACCOUNT = "svc-batch"
AGENTS = (
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "audit-cli/1.4",
    "Go-http-client/1.1",
)
BATCH = 5000
COPY_CHUNK = 1 << 20
NULL = "\\N"

# (weight, source, event, level, status, method, path, track). `{user}` and `{n}` are filled
# per row; a None method means "no request line" (not an api.request).
KINDS = (
    (2500, "v1", "api.request", "INFO", 200, "GET", "/v1/me", None),
    (1500, "v1", "api.request", "INFO", 200, "GET", "/v1/logs", None),
    (800, "v1", "api.request", "INFO", 200, "GET", "/v1/logs?level=WARNING", None),
    (600, "v1", "api.request", "INFO", 200, "GET", "/v1/logs?user={user}", None),
    (800, "v1", "api.request", "INFO", 200, "GET", "/v1/logs/{n}", None),
    (50, "v1", "api.request", "INFO", 200, "GET", "/v1/logs/export?format=csv", None),
    (300, "v1", "api.request", "INFO", 200, "GET", "/v1/users", None),
    (20, "v1", "api.request", "INFO", 201, "POST", "/v1/users", None),
    (500, "v1", "api.request", "WARNING", 401, "GET", "/v1/me", None),
    (150, "v1", "api.request", "WARNING", 403, "GET", "/v1/users", None),
    (200, "v1", "api.request", "WARNING", 404, "GET", "/v1/logs/{n}", None),
    (100, "v1", "api.request", "WARNING", 404, "GET", "/v1/nope", None),
    (100, "v1", "api.request", "WARNING", 400, "GET", "/v1/logs?limit=0", None),
    (10, "v1", "api.request", "ERROR", 500, "GET", "/v1/logs", None),
    (5, "v1", "api.request", "ERROR", 503, "POST", "/v1/users", None),
    (700, "auth", "login.success", "INFO", 200, "POST", "/login", "logged in"),
    (250, "auth", "login.failure", "WARNING", 401, "POST", "/login", "invalid password"),
    (100, "auth", "login.failure", "WARNING", 401, "POST", "/login", "unknown user"),
    (30, "auth", "login.locked", "WARNING", 429, "POST", "/login", "locked out for 60 s"),
    (300, "auth", "logout", "INFO", 200, "GET", "/logout", "logged out"),
    (400, "main", "index.view", "DEBUG", 200, "GET", "/", "GET /"),
    (
        5,
        "app",
        "request.exception",
        "ERROR",
        500,
        "GET",
        "/v1/logs",
        "builtins.ZeroDivisionError: division by zero",
    ),
    (
        5,
        "app",
        "request.exception",
        "ERROR",
        500,
        "POST",
        "/v1/users",
        "sqlalchemy.exc.OperationalError: connection to server lost",
    ),
    (5, "v1", "user.create", "INFO", 201, "POST", "/v1/users", "created user {user}"),
    (
        1,
        "app",
        "audit.unavailable",
        "CRITICAL",
        503,
        "POST",
        "/login",
        "audit spool full: disk quota exceeded",
    ),
)
ANONYMOUS = {("v1", 401), ("main", 200)}


@dataclass
class LoadReport:
    rows: int
    copy_seconds: float
    index_seconds: float
    vacuum_seconds: float

    @property
    def seconds(self) -> float:
        return self.copy_seconds + self.index_seconds + self.vacuum_seconds


def first_moment(months: int) -> datetime:
    """Where a trail of `months` months begins (it ends at END)."""
    start = partitions.add_months(END.date(), -months)
    return datetime(start.year, start.month, 1, tzinfo=UTC)


def synthetic_rows(
    count: int, seed: int = 1, version: int = CHAIN_VERSION, months: int = 12
) -> Iterator[dict]:
    """`count` rows in id order over `months` months, as dicts of the hashed fields of chain
    `version` (1: as the rows written before migration 0008); `created_at` and `event_id` are
    already text (RFC 3339 with Z and microseconds; the canonical UUID), as COPY and
    `row_hash` both take them."""
    rng = random.Random(seed)
    kinds = [_Kind(*kind) for kind in KINDS]
    weights = [kind.weight for kind in kinds]
    start = first_moment(months)
    mean_gap = (END - start) / timedelta(microseconds=1) / max(count, 1)
    moment = int(start.timestamp() * 1_000_000)
    day, day_text = None, ""
    row_id = 0
    while row_id < count:
        for kind in rng.choices(kinds, weights, k=min(BATCH, count - row_id)):
            row_id += 1
            # A few rows share their microsecond with the previous one, as under load.
            moment += 0 if rng.random() < 0.02 else int(rng.expovariate(1 / mean_gap)) + 1
            seconds, micros = divmod(moment, 1_000_000)
            if seconds // 86400 != day:
                day = seconds // 86400
                day_text = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
            in_day = seconds % 86400
            created_at = (
                f"{day_text}T{in_day // 3600:02d}:{in_day // 60 % 60:02d}:"
                f"{in_day % 60:02d}.{micros:06d}Z"
            )
            row = kind.row(rng, row_id, created_at)
            if version == 1:
                row = {name: row[name] for name in HASHED_FIELDS_OF[1]}
            yield row


class _Kind:
    """One kind of row of KINDS, and how to make one."""

    def __init__(self, weight, source, event, level, status, method, path, track):
        self.weight, self.source, self.event, self.level = weight, source, event, level
        self.status, self.method, self.path, self.track = status, method, path, track
        self.anonymous = (source, status) in ANONYMOUS
        self.guessed = track == "unknown user"

    def row(self, rng: random.Random, row_id: int, created_at: str) -> dict:
        if self.anonymous or self.guessed:
            user = f"guess{int(rng.random() * 100_000):05d}" if self.guessed else None
            ip = f"198.51.{int(rng.random() * 256)}.{1 + int(rng.random() * 254)}"
        elif rng.random() < 0.2:
            user, ip = SERVICE_ACCOUNT, "10.200.0.1"
        else:
            number = int(rng.random() * USERS)
            user = f"user{number:04d}"
            ip = f"10.{number // 250}.{number % 250}.{1 + int(rng.random() * 3)}"
        path = self.path
        if "{" in path:
            path = path.format(
                user=f"user{int(rng.random() * USERS):04d}", n=1 + int(rng.random() * row_id)
            )
        if self.track is None:
            track = f"{self.method} {path} -> {self.status}"
        elif "{" in self.track:
            track = self.track.format(user=f"user{USERS + int(rng.random() * USERS):04d}")
        else:
            track = self.track
        actor_id = None
        if user is not None and not self.guessed:  # the users' ids: userNNNN is NNNN + 1
            actor_id = int(user[4:]) + 1 if user.startswith("user") else USERS + 1
        return {
            "id": row_id,
            "created_at": created_at,
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": self.source,
            "event": self.event,
            "level": self.level,
            "user": user,
            "ip": ip,
            "track": track,
            "method": self.method,
            "path": path.split("?")[0],
            "status": self.status,
            "request_id": f"{rng.getrandbits(128):032x}",
            "user_agent": AGENTS[int(rng.random() * len(AGENTS))],
            **self.structured(rng, path, track, actor_id),
        }

    def structured(self, rng: random.Random, path: str, track: str, actor_id) -> dict:
        """The structured record's fields of the row, as the service writes them."""
        target_type = target_id = target = None
        details = {}
        if self.event == "user.create" or path == "/v1/users" and self.method == "POST":
            name = track.rpartition(" ")[2] if self.event == "user.create" else "new-user"
            target_type, target_id, target = "user", str(USERS + 1), name
        elif path.startswith("/v1/logs"):
            target_type = "trail"
            details = {"filters": {"order": "desc", "limit": 100}}
        if self.event.endswith(".failure"):
            details = {"reason": track.replace(" ", "_")}
        outcome = (
            "failure"
            if self.event.endswith(".failure")
            else outcome_for_status(self.status, self.level)
        )
        token_id = None if actor_id is None or self.source != "v1" else int(rng.random() * 1e6)
        return {
            "actor_id": actor_id,
            "token_id": token_id,
            "target_type": target_type,
            "target_id": target_id,
            "target": target,
            "outcome": outcome,
            "details": details,
            "chain_version": CHAIN_VERSION,
        }


def chained(
    rows: Iterator[dict], checkpoint_every: int, key: bytes, checkpoints: list, head: dict
) -> Iterator[bytes]:
    """COPY text for `rows`, each hashed onto the chain; appends the periodic checkpoints to
    `checkpoints`, and sets the last row's `id`, `hash` and `created_at` in `head`.

    The synthetic values hold no tab, newline or backslash, so they need no COPY escaping;
    only a missing user or address is written as COPY's null, `\\N`.
    """
    prev_hash = GENESIS
    last = None
    lines = []
    size = 0
    for row in rows:
        this_hash = row_hash(row, prev_hash)
        names = HASHED_FIELDS_OF[row.get("chain_version") or 1]
        line = "\t".join([*(_copy_text(row[name]) for name in names), prev_hash, this_hash])
        line += "\n"
        prev_hash = this_hash
        if row["id"] % checkpoint_every == 0:
            moment = datetime.fromisoformat(row["created_at"])
            checkpoints.append(sign(key, row["id"], this_hash, moment, "periodic"))
        lines.append(line)
        size += len(line)
        last = row
        if size >= COPY_CHUNK:
            yield "".join(lines).encode()
            lines, size = [], 0
    if last is not None:
        head.update(id=last["id"], hash=prev_hash, created_at=last["created_at"])
    if lines:
        yield "".join(lines).encode()


def _copy_text(value) -> str:
    """A value as COPY's text format takes it (the synthetic values need no escaping)."""
    if value is None:
        return NULL
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def load(
    url: str,
    count: int,
    key: bytes,
    checkpoint_every: int = 1000,
    seed: int = 1,
    progress=None,
    version: int = CHAIN_VERSION,
    tree: bool = True,
    months: int = 12,
) -> LoadReport:
    """Load `count` synthetic rows spread over `months` months into the empty, migrated
    database at `url` (a libpq URL), as rows of chain `version` (1 into a database migrated to
    0007, before the structured record); `tree`: build their Merkle tree too (False: a
    database before migration 0009). A partitioned trail (migration 0012) gets a partition a
    month first, as `flask audit maintain` would have made them."""
    with psycopg.connect(url) as connection:
        _check_empty(connection)
        _make_partitions(connection, months)
        indexes = _indexes(connection)
        _drop(connection, indexes)
        connection.commit()

        started = time.perf_counter()
        checkpoints: list[dict] = []
        head: dict = {}
        with connection.cursor() as cursor:
            names = (*HASHED_FIELDS_OF[version], "prev_hash", "hash")
            columns = ", ".join(f'"{name}"' for name in names)
            with cursor.copy(f"COPY audit_log ({columns}) FROM STDIN") as copy:
                rows = synthetic_rows(count, seed, version, months)
                for chunk in chained(rows, checkpoint_every, key, checkpoints, head):
                    copy.write(chunk)
                    if progress is not None:
                        progress(chunk.count(b"\n"))
            _store_checkpoints(cursor, checkpoints)
            _set_head(cursor, head, checkpoint_every)
        connection.commit()
        copied = time.perf_counter()

    _rebuild(url, indexes)
    if tree:  # after the primary key is back: the hashes are read in its order
        build_tree(url)
    rebuilt = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) audit_log")
        connection.execute("VACUUM (ANALYZE) audit_checkpoint")
        if tree:
            connection.execute("VACUUM (ANALYZE) audit_tree_node")
            connection.execute("VACUUM (ANALYZE) audit_tree_tile")
        if _indexes(connection) != indexes:
            raise RuntimeError("the rebuilt indexes differ from the migration's")
    done = time.perf_counter()
    return LoadReport(count, copied - started, rebuilt - copied, done - rebuilt)


def build_tree(url: str) -> None:
    """The Merkle tree of the loaded rows (backend/audit/merkle.py): their hashes read in id
    order on one connection, the tree's nodes streamed to COPY on another, the frontier
    stored in the chain's head, and the tiles made from the nodes, as the live writer leaves
    them."""
    frontier: list[bytes] = []
    size = 0
    with psycopg.connect(url) as reader, psycopg.connect(url) as writer:
        with (
            reader.cursor(name="hashes") as hashes,
            writer.cursor().copy("COPY audit_tree_node (position, hash) FROM STDIN") as copy,
        ):
            hashes.itersize = BATCH * 4
            hashes.execute("SELECT hash FROM audit_log ORDER BY id")
            while batch := hashes.fetchmany(BATCH * 4):
                leaves = [merkle.leaf_hash(row_hash) for (row_hash,) in batch]
                size, completed = merkle.append(frontier, size, leaves)
                copy.write("".join(f"{at}\t{node.hex()}\n" for at, node in completed))
        writer.execute(
            "UPDATE audit_chain SET tree_frontier = %s WHERE id = 1", (merkle.pack(frontier),)
        )
        writer.commit()
    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"))
    with engine.begin() as connection:
        tiles.build(connection, size)
    engine.dispose()


def _check_empty(connection: psycopg.Connection) -> None:
    head = connection.execute("SELECT last_id FROM audit_chain WHERE id = 1").fetchone()
    rows = connection.execute("SELECT EXISTS (SELECT 1 FROM audit_log)").fetchone()[0]
    if head != (0,) or rows:
        raise RuntimeError("the bench loads into an empty, freshly migrated database only")


def _make_partitions(connection: psycopg.Connection, months: int) -> None:
    kind = connection.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_log')"
    ).fetchone()
    if kind != ("p",):
        return
    start = first_moment(months).date()
    for count in range(months):
        partition = partitions.month_partition(partitions.add_months(start, count))
        if connection.execute("SELECT to_regclass(%s)", (partition.name,)).fetchone()[0]:
            continue
        for statement in partitions.partition_statements(partition):
            connection.execute(statement)


def _indexes(connection: psycopg.Connection) -> dict[str, tuple[str | None, str]]:
    """audit_log's indexes: name -> (constraint definition or None, index definition)."""
    return {
        name: (constraint, index)
        for name, constraint, index in connection.execute(
            """SELECT i.indexrelid::regclass::text, pg_get_constraintdef(c.oid),
                  pg_get_indexdef(i.indexrelid)
           FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid
                                                    AND c.conrelid = i.indrelid
           WHERE i.indrelid = 'audit_log'::regclass"""
        )
    }


def _drop(connection: psycopg.Connection, indexes: dict) -> None:
    for name, (constraint, _) in indexes.items():
        if constraint is None:
            connection.execute(f'DROP INDEX "{name}"')
        else:
            connection.execute(f'ALTER TABLE audit_log DROP CONSTRAINT "{name}"')


def _rebuild(url: str, indexes: dict) -> None:
    """Recreate the indexes from their definitions, two connections at a time (two cores);
    the biggest first, so the others fill in beside it."""
    # A partitioned table's index reads back as `ON ONLY audit_log`, which would make the
    # parent's index alone (invalid, with none on the partitions): built on all of them.
    statements = [
        f'ALTER TABLE audit_log ADD CONSTRAINT "{name}" {constraint}'
        if constraint
        else index.replace(" ON ONLY ", " ON ", 1)
        for name, (constraint, index) in indexes.items()
    ]
    statements.sort(key=lambda sql: " gin " not in sql.lower())
    failures: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("SET maintenance_work_mem = '1GB'")
                connection.execute("SET max_parallel_maintenance_workers = 0")
                while statements:
                    try:
                        sql = statements.pop(0)
                    except IndexError:
                        return
                    connection.execute(sql)
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller)
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def _store_checkpoints(cursor: psycopg.Cursor, checkpoints: list[dict]) -> None:
    with cursor.copy(
        "COPY audit_checkpoint (log_id, log_hash, created_at, reason, mac) FROM STDIN"
    ) as copy:
        for point in checkpoints:
            copy.write_row(
                (
                    point["log_id"],
                    point["log_hash"],
                    point["created_at"],
                    point["reason"],
                    point["mac"],
                )
            )


def _set_head(cursor: psycopg.Cursor, head: dict, checkpoint_every: int) -> None:
    """Point the chain's head at the last row (`head`, from `chained`), so the live writer
    appends after it."""
    if not head:
        return
    cursor.execute(
        "UPDATE audit_chain SET last_id = %s, last_hash = %s, last_created_at = %s,"
        " since_checkpoint = %s WHERE id = 1",
        (head["id"], head["hash"], head["created_at"], head["id"] % checkpoint_every),
    )
