"""Column types that behave the same on SQLite and PostgreSQL, and connection set-up."""

import select
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus
from sqlalchemy.dialects.postgresql import JSONB

from backend.concurrency import os_poll


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so the value is stored as naive
    UTC (fixed-width text, which sorts and compares correctly) and made aware again on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use backend.clock.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONObject(sa.types.TypeDecorator):
    """A JSON object (a dict in Python): jsonb on PostgreSQL (keys normalised, indexable), JSON
    text on SQLite."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else sa.JSON())

    @property
    def python_type(self) -> type:
        return dict


# 64-bit on PostgreSQL; on SQLite an INTEGER PRIMARY KEY, the rowid itself.
BigIntegerKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """WAL, a busy timeout, foreign keys and a Unicode lower() on every SQLite connection."""
    # WAL lets readers and the audit writer's own connection work side by side.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLite's own lower() folds ASCII only, so ILIKE (lower(x) LIKE lower(y) on SQLite) would
    # miss "Ü" for "ü"; PostgreSQL folds every letter. Python's str.lower does too.
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)


def discard_closed_connections(engine: sa.Engine) -> None:
    """Replace a pooled PostgreSQL connection that the server has closed, before it is used.

    A server that restarts or terminates a backend (pg_terminate_backend) tells the client
    and closes the socket, so an idle connection it has left has input waiting. Looking for
    that is one poll(), where SQLAlchemy's pool_pre_ping sends a query and waits for the answer
    on every checkout: a round trip per request. (A peer that vanished without a word is not
    seen here; its first statement fails, and the audit writer spools what it held.)
    """
    if engine.dialect.name == "postgresql":
        sa.event.listen(engine, "checkout", _closed_by_server)


def _closed_by_server(dbapi_connection, connection_record, connection_proxy) -> None:
    try:
        socket = dbapi_connection.pgconn.socket
    except Exception:  # psycopg: the connection is closed already
        raise sa.exc.DisconnectionError("connection closed") from None
    waiting = os_poll()  # a look that never waits: the system's, not gevent's loop
    waiting.register(socket, select.POLLIN)
    if waiting.poll(0):
        raise sa.exc.DisconnectionError("the server closed this pooled connection")


@contextmanager
def autocommit_connection(engine: sa.Engine) -> Iterator[psycopg.Connection]:
    """A pooled PostgreSQL connection as the driver's own, in autocommit mode, for the two
    statements every request runs (the token lookup, the audit append): no BEGIN or ROLLBACK
    round trips around a lone SELECT, and strings that carry their own BEGIN and COMMIT.

    Back in the pool it is as it came: a transaction left open by an error is rolled back, and a
    connection that broke is invalidated rather than handed out again.
    """
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    try:
        connection.autocommit = True
        yield connection
    finally:
        try:
            if not connection.broken:
                connection.rollback()  # nothing to do unless a statement failed mid-transaction
                connection.autocommit = False
        except psycopg.Error:
            pass
        if connection.broken or connection.info.transaction_status != TransactionStatus.IDLE:
            pooled.invalidate()
        pooled.close()


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def on_this_database(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's `include_object`: leave out what `ddl_if(dialect=...)` keeps off this database
    (the PostgreSQL-only trigram index), which alembic would otherwise compare on SQLite too;
    and the trail's partitions (backend/audit/partitions.py), which are the table's storage,
    not tables of the models."""
    from backend.audit.partitions import is_partition
    from backend.extensions import db

    if type_ == "table" and reflected and is_partition(name):
        return False
    condition = getattr(obj, "_ddl_if", None)
    if condition is None or condition.dialect is None:
        return True
    dialects = {condition.dialect} if isinstance(condition.dialect, str) else condition.dialect
    return db.engine.dialect.name in dialects
