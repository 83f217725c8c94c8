"""Durable audit writes, in a transaction of their own, on a hash chain, with a spool behind.

Never the request's `db.session`: a view that rolls back must not take its audit row with it,
and the audit commit must not commit a view's half-done work. `write` returns once the event
is durable: committed to the database or, when the database cannot take it (down, lock
timeout, disk full), fsync'd to the local spool, which is replayed in order and exactly once on
the next successful write (or by `flask audit replay`). When neither can take it, the request
fails closed with 503 rather than answering without its record.

An event the database refuses for what it holds (refusals.py) is set aside in the spool's
rejected file and recorded as `audit.rejected`, on the write path and on replay alike; the
events it shared a batch with are written as if it had not been there.

Group commit (GroupCommit): the events of a process's concurrent requests are appended in
one transaction: one chain lock, one commit, one disk flush for the lot, instead of one each;
each request still returns only once its own event is durable.
"""

import logging
import threading
from collections import deque
from dataclasses import dataclass
from itertools import islice

import psycopg
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import ServiceUnavailable

from backend.audit import chain, refusals
from backend.audit.events import AuditEvent
from backend.audit.spool import Spool
from backend.db_types import autocommit_connection, discard_closed_connections, sqlite_pragmas

logger = logging.getLogger(__name__)


class AuditUnavailable(ServiceUnavailable):
    """Neither the database nor the spool could take an event: the request must not succeed."""

    description = "The audit trail cannot record this request right now; try again later."


class AuditWriter:
    """One per app: its own engine (so the request's pool and session never carry audit
    writes), the signing key of the checkpoints, and the spool."""

    def __init__(self, app: Flask):
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        self.engine = _writer_engine(url)
        self.key = app.config["AUDIT_SIGNING_KEY"].encode()
        self.checkpoint_every = app.config["AUDIT_CHECKPOINT_EVERY"]
        self.spool = Spool(app.config["AUDIT_SPOOL_PATH"])

        self.group = GroupCommit(self.write_batch)

    def write(self, event: AuditEvent) -> int | None:
        """Make `event` durable; return its row id, or None when it was spooled.

        Concurrent callers of the process share one transaction (see GroupCommit)."""
        return self.group.submit(event)

    def write_batch(self, events: list[AuditEvent]) -> list[int | None]:
        """Make `events` durable together, in order: their row ids, or None each if spooled
        (or set aside: refused by the database, and recorded as such)."""
        try:
            if self.spool.pending():
                return self._replay_then(events).ids
            return self._commit_each_that_fits(events, [])
        except (SQLAlchemyError, psycopg.Error):
            logger.exception("audit write of %d events failed; spooling them", len(events))
        try:
            self.spool.append(*events)
        except OSError:
            logger.exception("audit spool failed too for %d events", len(events))
            raise AuditUnavailable() from None
        return [None] * len(events)

    def _replay_then(self, events: list[AuditEvent]) -> "Replay":
        """Replay the spool, then `events`, in one transaction, holding the spool meanwhile
        (the events the database refuses are moved to the rejected file)."""
        set_aside: list[tuple[AuditEvent, str]] = []
        with self.spool.draining() as drain:
            with self.engine.connect() as connection:
                waiting = _not_yet_written(connection, drain.events)
            ids = self._commit_each_that_fits([*waiting, *events], set_aside)
            drain.done()
        replayed = sum(row_id is not None for row_id in ids[:len(waiting)])
        if waiting:
            logger.warning("replayed %d spooled audit events", replayed)
        return Replay(replayed, set_aside, ids[len(waiting):])

    def _commit_each_that_fits(self, events: list[AuditEvent],
                               set_aside: list[tuple[AuditEvent, str]]) -> list[int | None]:
        """Append and commit `events` in order, in one transaction unless the database refuses
        one for its content: then the batch is halved until that event stands alone, every
        other is committed, and it is set aside (added to `set_aside` with the database's
        reason). The ids, None for an event set aside."""
        if not events:
            return []
        try:
            return self._append_and_commit(events)
        except refusals.REFUSALS as error:
            if len(events) == 1:
                set_aside.append((events[0], self._set_aside(events[0], error)))
                return [None]
            half = len(events) // 2
            return (self._commit_each_that_fits(events[:half], set_aside)
                    + self._commit_each_that_fits(events[half:], set_aside))

    def _set_aside(self, event: AuditEvent, error: BaseException) -> str:
        """Record that the database refused `event`, then keep it in the rejected file;
        return the database's reason."""
        why = refusals.reason(error)
        try:
            self._append_and_commit([refusals.rejection(event, why,
                                                        self.spool.rejected_path.name)])
        except refusals.REFUSALS:
            # Refusing even this row, the database refuses every event, not this one's
            # content (a chain head behind its rows, a broken constraint): an outage, spooled.
            logger.error("the database refuses the record of a refused event too")
            raise error from None
        logger.error("the database refused audit event %s; set aside in %s: %s",
                     event.event_id, self.spool.rejected_path, why)
        try:
            self.spool.set_aside(event)
        except OSError:
            logger.exception("could not set aside audit event %s", event.event_id)
            raise AuditUnavailable() from None
        return why

    def _append_and_commit(self, events: list[AuditEvent]) -> list[int]:
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:
                return self._append(connection, events)
        # PostgreSQL: two round trips on the driver's connection (chain.append_and_commit).
        with autocommit_connection(self.engine) as connection:
            return chain.append_and_commit(connection, events, self.key, self.checkpoint_every)

    def _append(self, connection: sa.Connection, events: list[AuditEvent]) -> list[int]:
        return chain.append(connection, events, self.key, self.checkpoint_every)

    def replay(self) -> "Replay":
        """Write every spooled event (`flask audit replay`): how many were written, and which
        the database refused (set aside)."""
        return self._replay_then([])

    def forget_connections(self, close: bool = True) -> None:
        """Empty the engine's pool (closing the connections unless `close` is False: a forked
        worker's are its parent's too) and start an empty group-commit line."""
        self.engine.dispose(close=close)
        self.group = GroupCommit(self.write_batch)


@dataclass
class Replay:
    """What a replay of the spool did."""

    replayed: int  # spooled events now in the trail
    set_aside: list[tuple[AuditEvent, str]]  # refused by the database, and its reason
    ids: list[int | None]  # of the events written after the spool's


class GroupCommit:
    """Group commit without a thread of its own (LevelDB's writer queue): requests that want to
    write queue up; the one at the front writes every event waiting (up to MAX_BATCH) in one
    transaction, wakes their requests, and hands the front to the next request in line.

    A lone request writes its own event with no switch; under load, one transaction carries
    the events of all the process's concurrent requests (greenlets in a gevent worker, threads
    under the development server and in tests). A request waits at most WAIT seconds for a
    turn that has not come, then fails closed (503); once its event is in a batch being
    written it waits for the outcome, which the database's timeouts bound.
    """

    MAX_BATCH = 500
    WAIT = 30.0

    def __init__(self, write_batch):
        self._write_batch = write_batch
        self._mutex = threading.Lock()
        self._line: deque[_Slot] = deque()

    def submit(self, event: AuditEvent) -> int | None:
        """Queue `event`; return what `write_batch` gave for it once it is durable."""
        slot = _Slot(event)
        with self._mutex:
            self._line.append(slot)
            front = len(self._line) == 1
        if not front and not slot.wait(self.WAIT):
            with self._mutex:
                if not slot.taken and self._line[0] is not slot:
                    self._line.remove(slot)
                    logger.error("audit write of %s/%s not durable after %s s", event.source,
                                 event.event, self.WAIT)
                    raise AuditUnavailable()
            slot.wait(None)  # in a batch being written, or just made the front: not long now
        if slot.done:
            return slot.outcome()
        self._lead()
        return slot.outcome()

    def _lead(self) -> None:
        """Write the waiting events at the front of the line, then wake the next front."""
        with self._mutex:
            batch = list(islice(self._line, self.MAX_BATCH))
            for slot in batch:
                slot.taken = True
        try:
            results = self._write_batch([slot.event for slot in batch])
        except BaseException as error:  # these requests fail (503, or 500 for a bug)
            results = [error] * len(batch)
        with self._mutex:
            for slot, result in zip(batch, results, strict=True):
                self._line.popleft()
                slot.finish(result)
            if self._line:
                self._line[0].wake()


class _Slot:
    """A request's place in the line: its event, and then the outcome of writing it."""

    __slots__ = ("event", "taken", "done", "_result", "_signal")

    def __init__(self, event: AuditEvent):
        self.event = event
        self.taken = self.done = False
        self._result = None
        self._signal = threading.Lock()  # held until the slot is woken
        self._signal.acquire()

    def wait(self, timeout: float | None) -> bool:
        return self._signal.acquire(timeout=-1 if timeout is None else timeout)

    def wake(self) -> None:
        self._signal.release()

    def finish(self, result) -> None:
        self._result, self.done = result, True
        self.wake()

    def outcome(self) -> int | None:
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


def _not_yet_written(connection: sa.Connection, events: list[AuditEvent]) -> list[AuditEvent]:
    done = chain.existing_event_ids(connection, [e.event_id for e in events])
    return [e for e in events if e.event_id not in done]


# A GIN index queues new entries in a pending list, which every search reads in full, and
# merges it into the index once it passes gin_pending_list_limit, a setting of the session
# that inserts. At PostgreSQL's 4 MB a busy trail's `q` searches slowed as the list grew:
# 2,461 pending rows made a rare search 14.8 instead of 13.3 ms at 10M rows, and a full list
# holds about five times as many. At 256 kB it holds a few hundred rows; the merges come more
# often, and inserting realistic rows cost 9.3 instead of 7.0 us each, against ~230 us of
# PostgreSQL's time per audited request. (A session setting, not the index's storage
# parameter: ALTER INDEX ... SET takes an ACCESS EXCLUSIVE lock that audit writes would queue
# behind.)
PENDING_LIST_LIMIT = "256kB"


def _writer_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 10, "isolation_level": None})
        sa.event.listen(engine, "connect", sqlite_pragmas)
        sa.event.listen(engine, "begin", _begin_immediate)
        return engine
    # Fail fast to the spool rather than hold the request: a dead server in 5 s, a chain lock
    # held by something else in 5 s, a server that stopped answering in 10 s. And keep the
    # pending list of `q`'s trigram index short (PENDING_LIST_LIMIT).
    engine = sa.create_engine(url, pool_size=4, connect_args={
        "connect_timeout": 5, "options": "-c lock_timeout=5000 -c statement_timeout=10000"
                                         f" -c gin_pending_list_limit={PENDING_LIST_LIMIT}"})
    discard_closed_connections(engine)
    return engine


def _begin_immediate(connection: sa.Connection) -> None:
    # Take SQLite's write lock before reading the chain head, or two writers deadlock.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def init_app(app: Flask) -> None:
    """Give the app its writer (the factory calls this)."""
    app.extensions["audit_writer"] = AuditWriter(app)


def writer() -> AuditWriter:
    """The current app's writer."""
    return current_app.extensions["audit_writer"]


def write(event: AuditEvent) -> int | None:
    """Make `event` durable through the current app's writer."""
    return writer().write(event)
