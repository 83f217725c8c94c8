"""Each sink's durable cursor (table audit_sink_cursor), and the lock that makes one relay at a
time deliver a sink.

The lock: on PostgreSQL a session advisory lock held by a connection of its own for as long as
the relay delivers the sink; the server drops it when that connection ends, however the relay
ended (a second relay, started as a hot spare, takes over then). On SQLite, whose database
lives on one host, an exclusive `flock` on a file beside the database does the same.
"""

import fcntl
import os
import zlib
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from backend.clock import utcnow
from backend.models import SinkCursor

# The first key of the advisory locks of sinks (the second is a checksum of the sink's name).
LOCK_NAMESPACE = 0x5EED


def delivered_id(connection: sa.Connection, name: str) -> int:
    """The last row id delivered to sink `name` (0: none yet)."""
    found = connection.execute(
        sa.select(SinkCursor.delivered_id).where(SinkCursor.name == name)
    ).scalar_one_or_none()
    return found or 0


def record(
    connection: sa.Connection,
    name: str,
    *,
    delivered: int,
    state: str,
    error: str | None = None,
    failed: bool = False,
) -> None:
    """Store what the relay knows of sink `name` (in the caller's transaction): the cursor, the
    state, the last error; `failed` counts one more failed attempt."""
    table = SinkCursor.__table__
    now: datetime = utcnow()
    updated = connection.execute(
        table.update()
        .where(table.c.name == name)
        .values(
            delivered_id=delivered,
            state=state,
            last_error=error,
            failures=table.c.failures + (1 if failed else 0),
            seen_at=now,
        )
    )
    if updated.rowcount == 0:
        connection.execute(
            table.insert().values(
                name=name,
                delivered_id=delivered,
                state=state,
                last_error=error,
                failures=1 if failed else 0,
                seen_at=now,
            )
        )


class SinkLock:
    """The right to deliver one sink; `acquire()` is False while another relay holds it."""

    def __init__(self, engine: sa.Engine, name: str):
        self.engine = engine
        self.name = name
        self._connection: sa.Connection | None = None
        self._file: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free (never waits)."""
        if self.engine.dialect.name == "postgresql":
            return self._acquire_advisory()
        return self._acquire_flock()

    def held(self) -> bool:
        """Whether the lock is still ours: on PostgreSQL its connection may have died (a server
        restart), which freed it."""
        if self._connection is None:
            return self._file is not None
        try:
            self._connection.exec_driver_sql("SELECT 1")
            return True
        except sa.exc.DBAPIError:
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up (ending its connection or closing its file frees it)."""
        if self._connection is not None:
            try:
                # Ended, not returned to the pool, which would keep the lock held.
                self._connection.invalidate()
                self._connection.close()
            except sa.exc.DBAPIError:
                pass  # a dead connection holds nothing any more
            self._connection = None
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _acquire_advisory(self) -> bool:
        key = zlib.crc32(self.name.encode()) - 2**31  # PostgreSQL's int4
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            taken = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:space, :key)"),
                {"space": LOCK_NAMESPACE, "key": key},
            ).scalar_one()
        except sa.exc.DBAPIError:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def _acquire_flock(self) -> bool:
        database = self.engine.url.database or "memory"
        digest = zlib.crc32(self.name.encode())
        path = Path(f"{database}.sink-{digest:08x}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._file = fd
        return True
