"""What more than one test module uses: error bodies, the trail and its verification, tampering,
retention, the spool, logins and lockouts. Fixtures stay in conftest.py; the helpers of the
tests that serve the app for real are in tests/serving.py.
"""

import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

import config
from backend.audit import merkle, tiles, writer
from backend.audit.chain import row_hash
from backend.audit.events import AuditEvent
from backend.auth import credentials
from backend.clock import moved, utcnow
from backend.extensions import db, token_auth
from backend.models import AuditChain, Log, PurgePermit, TreeHead, TreeNode, TreeTile, User
from backend.roles import owner_engine
from tests.conftest import ALICE, basic, bearer

# --- a row's fields, as CONTRACT.md lists them ------------------------------------------------

# The first release's fields of a row in the API, in their order.
FIRST_RELEASE_FIELDS = (
    "id",
    "created_at",
    "source",
    "event",
    "level",
    "user",
    "ip",
    "track",
    "method",
    "path",
    "status",
    "request_id",
    "user_agent",
)
# The structured record's, which the second release adds after them.
STRUCTURED_FIELDS = (
    "actor_id",
    "token_id",
    "target_type",
    "target_id",
    "target",
    "outcome",
    "details",
)

# --- error bodies -----------------------------------------------------------------------------

JSON = "application/json; charset=utf-8"
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_entity_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_server_error",
    503: "service_unavailable",
}
CRASH_MESSAGE = "kaboom: db password is hunter2"


def assert_error(response, status: int, details: set[str] | None = None) -> dict:
    """Check `{"error": {"status", "code", "message"[, "details"]}}`; return the inner object.

    `details` are the field names a validation error must name, each with a non-empty list of
    messages; without them the error must have no `details` at all.
    """
    assert response.status_code == status
    assert response.content_type == JSON
    body = response.get_json()
    assert list(body) == ["error"]
    error = body["error"]
    expected_keys = {"status", "code", "message"} | ({"details"} if details else set())
    assert set(error) == expected_keys
    assert (error["status"], error["code"]) == (status, CODES[status])
    assert isinstance(error["message"], str) and error["message"].strip()
    if details:
        assert set(error["details"]) == details
        for messages in error["details"].values():
            assert isinstance(messages, list) and messages
            assert all(isinstance(message, str) and message for message in messages)
    return error


def crash():
    raise RuntimeError(CRASH_MESSAGE)


def add_crashing_route(app, api, boom=crash) -> str:
    """Add GET /v1/boom (bearer auth) that runs `boom` (default: raise RuntimeError); return
    alice's token for it.

    Routes can only be added before the app's first request, so this logs in afterwards.
    """
    app.add_url_rule("/v1/boom", "boom", token_auth.login_required(boom))
    api.create_user(*ALICE)
    return api.login(*ALICE)


# --- users ------------------------------------------------------------------------------------


def stored_users(app) -> dict[str, bool]:
    """Every user in the database: name -> is_admin, oldest first."""
    with app.app_context():
        return {
            user.username: user.is_admin
            for user in db.session.scalars(sa.select(User).order_by(User.id))
        }


# --- logins and lockouts ----------------------------------------------------------------------

ATTACKER = "203.0.113.66"
WRONG = "not-the-password"


def attempt(client, username: str, password: str, address: str = ATTACKER, headers=None):
    """POST /login with HTTP Basic from `address`."""
    return client.post(
        "/login",
        headers={**basic(username, password), **(headers or {})},
        environ_base={"REMOTE_ADDR": address},
    )


def same_headers(response) -> dict:
    """The response's headers, but for the one that differs on every request."""
    return {name: value for name, value in response.headers if name != "X-Request-ID"}


def assert_locked(response, retry_after: int) -> None:
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(retry_after)
    assert response.get_json() == {
        "error": {
            "status": 429,
            "code": "too_many_requests",
            "message": "Too many failed attempts; try again later.",
        }
    }


# --- password changes -------------------------------------------------------------------------

NEW_PASSWORD = "alice-new-password-2"
# Locks would answer the timing trials early: keep every threshold out of reach.
NO_LOCKOUT = {
    "LOGIN_MAX_FAILURES": "1000",
    "LOGIN_MAX_FAILURES_PER_ADDRESS": "1000",
    "LOGIN_MAX_FAILURES_PER_ACCOUNT": "1000",
}


def change_password(client, token: str, current: str, new: str = NEW_PASSWORD):
    return client.put(
        "/v1/me/password",
        json={"current_password": current, "new_password": new},
        headers=bearer(token),
    )


def login_racing(client, monkeypatch, act):
    """Alice's login, with `act()` run right after it checked her password (before it made
    its token); return its response."""

    check = credentials.password_problem

    def check_then_act(user, password):
        monkeypatch.undo()  # once: act() may check a password itself
        problem = check(user, password)
        act()
        return problem

    monkeypatch.setattr(credentials, "password_problem", check_then_act)
    return client.post("/login", headers=basic(*ALICE))


# --- rows written straight to the trail, and its listing --------------------------------------

T = datetime(2020, 1, 1, 10, 0, tzinfo=UTC)


def write(app, **fields) -> int:
    """Insert one audit row the way the service does; return its id."""
    with app.app_context():
        return writer.write(_test_event(fields))


def write_many(app, count: int, **fields) -> list[int]:
    """Insert `count` audit rows the way the service does, in one batch (one transaction, as
    concurrent requests share one); return their ids."""
    with app.app_context():
        return writer.writer().write_batch([_test_event(fields) for _ in range(count)])


def _test_event(fields: dict) -> AuditEvent:
    return AuditEvent(
        **{"source": "app", "event": "test.event", "level": "INFO", "track": "seeded", **fields}
    )


def next_link(response) -> str:
    """The URL of a `Link: <url>; rel="next"` header."""
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers.get("Link", ""))
    assert match, response.headers.get("Link")
    return match[1]


# --- the chain: tampering and `flask audit verify` --------------------------------------------

PROTECTED = ("audit_log", "audit_checkpoint")
CHECKPOINT_EVERY_3 = pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="3")


# Each append-only table's triggers on SQLite: no update, no delete (and none under a hold,
# for the rows and checkpoints).
SQLITE_TRIGGERS = {
    "audit_log": 3,
    "audit_checkpoint": 3,
    "audit_tree_node": 2,
    "audit_tree_tile": 2,
}


@contextmanager
def tampering(app, tables: tuple[str, ...] = PROTECTED) -> Iterator[sa.Connection]:
    """A transaction of the tables' owner in which the append-only triggers of `tables` (the
    trail's rows and checkpoints unless told) are lifted, as the owner could lift them; they
    are back when the block ends."""
    with app.app_context(), owner_engine().begin() as connection:
        if connection.dialect.name == "postgresql":
            for table in tables:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"
                )
            yield connection  # an error rolls the whole transaction back, triggers included
            for table in tables:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only"
                )
            return
        triggers = connection.execute(
            sa.text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        triggers = [trigger for trigger in triggers if trigger.tbl_name in tables]
        counted = Counter(trigger.tbl_name for trigger in triggers)
        assert counted == {table: SQLITE_TRIGGERS[table] for table in tables}, triggers
        for name, _, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        try:
            yield connection
        finally:
            for _, _, sql in triggers:
                connection.exec_driver_sql(sql)


def flask_audit(runner, *args: str, input: str | None = None):
    """`flask audit ARGS...`."""
    return runner.invoke(args=["audit", *args], input=input)


def verify_line(runner, *args: str) -> tuple[int, str]:
    """`flask audit verify ARGS...`: its exit code and the verdict line for people."""
    result = flask_audit(runner, "verify", *args)
    return result.exit_code, result.stdout.strip()


def assert_foreign_keys_enforced(app) -> None:
    """On SQLite, every pooled connection enforces foreign keys (the migrations turn it off
    while they run, on a connection of the app's pool)."""
    if sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() != "sqlite":
        return
    with app.app_context(), ExitStack() as stack:
        connections = [stack.enter_context(db.engine.connect()) for _ in range(6)]
        enforced = [c.exec_driver_sql("PRAGMA foreign_keys").scalar() for c in connections]
    assert enforced == [1] * 6


def both_ways(runner) -> tuple[tuple[int, str], tuple[int, str]]:
    """The verdict of `flask audit verify` in one walk, and in three processes (on PostgreSQL,
    segments checked by the fast pass first)."""
    return verify_line(runner, "--workers", "1"), verify_line(runner, "--workers", "3")


def assert_broken(runner, expected: str, *args: str) -> None:
    """`flask audit verify ARGS...` exits 1 with a verdict line that starts with `expected`."""
    code, line = verify_line(runner, *args)
    assert code == 1, line
    assert line.startswith(expected), line


def make_trail(client, count: int) -> list[str]:
    """`count` real requests (GET /, one index.view row each); their request ids in order."""
    responses = [client.get("/") for _ in range(count)]
    assert [response.status_code for response in responses] == [200] * count
    return [response.headers["X-Request-ID"] for response in responses]


def stored_rows(connection: sa.Connection) -> list[dict]:
    """Every row of the trail as the hash sees it, in id order."""
    return [
        dict(row)
        for row in connection.execute(sa.select(Log.__table__).order_by(Log.id)).mappings()
    ]


def recompute_chain(connection: sa.Connection, row_id: int, **changes) -> None:
    """What someone with write access but without AUDIT_SIGNING_KEY can do: change row
    `row_id`, recompute every hash from it on with the public `row_hash`, move the head."""
    rows = stored_rows(connection)
    prev_hash = next(row["prev_hash"] for row in rows if row["id"] == row_id)
    for row in rows:
        if row["id"] < row_id:
            continue
        if row["id"] == row_id:
            row.update(changes)
        row["prev_hash"], row["hash"] = prev_hash, row_hash(row, prev_hash)
        prev_hash = row["hash"]
        changed = changes if row["id"] == row_id else {}
        connection.execute(
            sa.update(Log)
            .where(Log.id == row["id"])
            .values(prev_hash=row["prev_hash"], hash=row["hash"], **changed)
        )
    connection.execute(sa.update(AuditChain).where(AuditChain.id == 1).values(last_hash=prev_hash))
    rewrite_tree(connection)


def rewrite_tree(connection: sa.Connection) -> None:
    """What the same person does to the Merkle tree after changing rows: rebuild it over the
    rows as they are now (keeping the stored hashes of rows purged before), and drop every
    signed tree head, none of which they can sign again without the private key."""
    rows = stored_rows(connection)
    first = rows[0]["id"] if rows else 1
    keep = [merkle.position(level, index) for level, index in merkle.perfect_subtrees(0, first - 1)]
    stored = dict(connection.execute(sa.select(TreeNode.position, TreeNode.hash)).all())
    connection.execute(sa.insert(PurgePermit).values(id=1))
    connection.execute(sa.delete(TreeHead))
    connection.execute(sa.delete(TreeNode).where(TreeNode.position.not_in(keep)))
    connection.execute(sa.delete(TreeTile))
    connection.execute(sa.delete(PurgePermit))
    frontier = [bytes.fromhex(stored[at]) for at in keep]
    leaves = [merkle.leaf_hash(row["hash"]) for row in rows]
    size, completed = merkle.append(frontier, first - 1, leaves)
    if completed:
        connection.execute(
            sa.insert(TreeNode), [{"position": at, "hash": node.hex()} for at, node in completed]
        )
    tiles.build(connection, size)
    connection.execute(
        sa.update(AuditChain)
        .where(AuditChain.id == 1)
        .values(tree_frontier=merkle.pack(frontier), tree_head_at=None)
    )


# --- the append-only tables -------------------------------------------------------------------

PERMIT = "INSERT INTO audit_purge_permit (id) VALUES (1)"


def table_rows(app, table: str) -> list[tuple]:
    """Every row of `table`, read by its owner (the app's role may not read the permits)."""
    with app.app_context(), owner_engine().connect() as connection:
        return connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY id")).all()


# --- the audit table taken away, the spool on a full disk -------------------------------------


@contextmanager
def audit_table_unavailable(app) -> Iterator[None]:
    """Really take the audit table away (renamed by its owner, with raw SQL), and give it back
    after."""

    def execute(sql: str) -> None:
        with app.app_context(), owner_engine().begin() as connection:
            connection.execute(sa.text(sql))

    execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    try:
        yield  # outside any app context: the requests in the block push their own
    finally:
        execute("ALTER TABLE audit_log_away RENAME TO audit_log")


DISK_FULL = pytest.mark.settings(AUDIT_SPOOL_PATH="/dev/full")


# --- the spool --------------------------------------------------------------------------------


def spool_file(app) -> Path:
    return Path(app.config["AUDIT_SPOOL_PATH"])


def spooled(app) -> list[dict]:
    """The spool's lines, each parsed: exactly one JSON object per newline-ended line."""
    data = spool_file(app).read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def spooled_events(client) -> int:
    response = client.get("/readyz")
    assert response.status_code == 200
    return response.get_json()["spooled_events"]


# --- retention: an aged trail and `flask audit purge` -----------------------------------------

OLD = timedelta(days=-400)


def days_ago(days: int) -> str:
    """The date `days` days ago, as YYYY-MM-DD."""
    return (utcnow() - timedelta(days=days)).date().isoformat()


def cutoff() -> str:
    """The DATE of every purge here: 390 days ago, between the old rows and the new ones, and
    past the default minimum retention (365 days)."""
    return days_ago(390)


def aged_trail(client, old: int, new: int) -> tuple[list[str], list[str]]:
    """`old` requests 400 days ago, then `new` now; the request ids of each."""
    with moved(OLD):
        old_ids = make_trail(client, old)
    return old_ids, make_trail(client, new)


def purge(runner, *args: str, before: str | None = None, input: str | None = None):
    """`flask audit purge --before DATE ARGS...` (DATE: `cutoff()` unless given)."""
    return flask_audit(runner, "purge", "--before", before or cutoff(), *args, input=input)


def ids_and_events(api) -> list[tuple[int, str]]:
    return [(row.id, row.event) for row in api.rows()]


# --- migrations -------------------------------------------------------------------------------


def latest_migration() -> str:
    """The head revision of the migration scripts in the repository."""
    [head] = ScriptDirectory(str(config.ROOT / "migrations")).get_heads()
    return head


def schema_version(app) -> list[str]:
    """The revisions recorded in the database's alembic_version table."""
    query = sa.text("SELECT version_num FROM alembic_version")
    with app.app_context(), db.engine.connect() as connection:
        return list(connection.execute(query).scalars())
