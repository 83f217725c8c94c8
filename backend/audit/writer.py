"""Durable audit writes, in a transaction of their own, on a hash chain, with a spool behind.

Never the request's `db.session`: a view that rolls back must not take its audit row with it,
and the audit commit must not commit a view's half-done work. `write` returns once the event
is durable: committed to the database or, when the database cannot take it (down, lock
timeout, disk full), fsync'd to the local spool, which is replayed in order and exactly once on
the next successful write (or by `flask audit replay`). When neither can take it, the request
fails closed with 503 rather than answering without its record.

Group commit: each process has one writer thread. A request hands its event over and waits
until it is durable; meanwhile the thread takes every event that is waiting, from all the
process's request threads, and appends them in one transaction: one chain lock, one commit,
one disk flush for the lot, instead of one each.
"""

import logging
import os
import queue
import threading
from concurrent.futures import Future

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import ServiceUnavailable

from backend.audit import chain
from backend.audit.events import AuditEvent
from backend.audit.spool import Spool
from backend.db_types import sqlite_pragmas

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
        """Make `events` durable together, in order: their row ids, or None each if spooled."""
        try:
            if self.spool.pending():
                return self._replay_then(events)[1]
            with self.engine.begin() as connection:
                return self._append(connection, events)
        except SQLAlchemyError:
            logger.exception("audit write of %d events failed; spooling them", len(events))
        try:
            self.spool.append(*events)
        except OSError:
            logger.exception("audit spool failed too for %d events", len(events))
            raise AuditUnavailable() from None
        return [None] * len(events)

    def _replay_then(self, events: list[AuditEvent]) -> tuple[int, list[int]]:
        """Replay the spool, then `events`, in one transaction, holding the spool meanwhile;
        return (how many spooled events were written, the ids of `events`)."""
        with self.spool.draining() as drain:
            with self.engine.begin() as connection:
                waiting = _not_yet_written(connection, drain.events)
                ids = self._append(connection, [*waiting, *events]) if waiting or events else []
            drain.done()
        if waiting:
            logger.warning("replayed %d spooled audit events", len(waiting))
        return len(waiting), ids[len(waiting):]

    def _append(self, connection: sa.Connection, events: list[AuditEvent]) -> list[int]:
        return chain.append(connection, events, self.key, self.checkpoint_every)

    def replay(self) -> int:
        """Write every spooled event (`flask audit replay`); return how many were written."""
        return self._replay_then([])[0]


    def close(self) -> None:
        """Stop this process's writer thread and close the engine's connections."""
        self.group.close()
        self.engine.dispose()


class GroupCommit:
    """A writer thread per process that commits the waiting events of all its request threads
    together, while each request waits for its own event to be durable.

    The thread starts on first use in each process, so a gunicorn worker forked from a master
    that built the app gets its own. A request waits at most WAIT seconds, then fails closed.
    """

    MAX_BATCH = 500
    WAIT = 30.0

    def __init__(self, write_batch):
        self._write_batch = write_batch
        self._queue: queue.SimpleQueue | None = None
        self._pid: int | None = None

    def submit(self, event: AuditEvent) -> int | None:
        """Hand `event` to the writer thread; return what `write_batch` gave for it."""
        done: Future = Future()
        self._queue_of_this_process().put((event, done))
        try:
            return done.result(timeout=self.WAIT)
        except TimeoutError:
            logger.error("audit write of %s/%s not durable after %s s", event.source,
                         event.event, self.WAIT)
            raise AuditUnavailable() from None

    def close(self) -> None:
        """Let the writer thread finish what it holds and stop."""
        if self._queue is not None and self._pid == os.getpid():
            self._queue.put(None)
            self._queue = None

    def _queue_of_this_process(self) -> queue.SimpleQueue:
        if self._pid != os.getpid():
            with _start_lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    threading.Thread(target=self._run, args=(self._queue,), daemon=True,
                                     name="audit-writer").start()
                    self._pid = os.getpid()
        return self._queue

    def _run(self, waiting: queue.SimpleQueue) -> None:
        stop = False
        while not stop:
            batch = [waiting.get()]
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                stop = True
                batch = [item for item in batch if item is not None]
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[AuditEvent, Future]]) -> None:
        try:
            results = self._write_batch([event for event, _ in batch])
        except BaseException as error:  # the requests fail (503, or 500 for a bug), not us
            for _, done in batch:
                done.set_exception(error)
            return
        for (_, done), result in zip(batch, results, strict=True):
            done.set_result(result)


# Held only while a process starts its writer thread; made anew in a forked child, where a
# lock the parent held at fork time would never be released.
_start_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_start_lock=threading.Lock()))


def _not_yet_written(connection: sa.Connection, events: list[AuditEvent]) -> list[AuditEvent]:
    done = chain.existing_event_ids(connection, [e.event_id for e in events])
    return [e for e in events if e.event_id not in done]


def _writer_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 10, "isolation_level": None})
        sa.event.listen(engine, "connect", sqlite_pragmas)
        sa.event.listen(engine, "begin", _begin_immediate)
        return engine
    # Fail fast to the spool rather than hold the request: a dead server in 5 s, a chain lock
    # held by something else in 5 s, a server that stopped answering in 10 s.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4,
                            connect_args={"connect_timeout": 5, "options":
                                          "-c lock_timeout=5000 -c statement_timeout=10000"})


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
