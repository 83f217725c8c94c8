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

The events of a process's concurrent requests are appended in one transaction (group_commit.py).
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from backend import metrics
from backend.audit import chain, refusals, signing
from backend.audit.events import AuditEvent
from backend.audit.group_commit import AuditUnavailable, GroupCommit
from backend.audit.spool import Spool
from backend.clock import utcnow
from backend.db_types import autocommit_connection, discard_closed_connections, sqlite_pragmas

logger = logging.getLogger(__name__)


class AuditWriter:
    """One per app: its own engine (so the request's pool and session never carry audit
    writes), the signing key of the checkpoints, and the spool."""

    def __init__(self, app: Flask):
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        self.engine = _writer_engine(url)
        self.key = app.config["AUDIT_SIGNING_KEY"].encode()
        self.checkpoint_every = app.config["AUDIT_CHECKPOINT_EVERY"]
        self.signer = signing.signer_for(app)
        self._key_listed = False
        self.spool = Spool(app.config["AUDIT_SPOOL_PATH"])

        self.group = GroupCommit(self.write_batch)

    def write(self, event: AuditEvent) -> int | None:
        """Make `event` durable; return its row id, or None when it was spooled.

        Concurrent callers of the process share one transaction (see GroupCommit)."""
        return self.group.submit(event)

    def write_batch(
        self, events: list[AuditEvent], more: chain.More | None = None
    ) -> list[int | None]:
        """Make `events` durable together, in order, and after them the events `more()` gives
        once the chain's head is locked (group_commit.py): their row ids, or None each if
        spooled (or set aside: refused by the database, and recorded as such)."""
        started = time.perf_counter()
        events = list(events)
        try:
            if self.spool.pending():
                ids = self._replay_then(events).ids
            else:
                ids = self._commit_each_that_fits(events, [], _joining(events, more))
            metrics.record_written(events, ids, started)
            return ids
        except (SQLAlchemyError, psycopg.Error, chain.BrokenHead) as error:
            logger.exception("audit write of %d events failed; spooling them", len(events))
            failure = error
        try:
            # The first event of an outage says that the trail went to the spool, and why.
            first = [] if self.spool.pending() else [_spooling(failure, events[0].created_at)]
            self.spool.append(*first, *events)
        except OSError:
            logger.exception("audit spool failed too for %d events", len(events))
            raise AuditUnavailable() from None
        metrics.SPOOLED.inc(len(events))
        return [None] * len(events)

    def _replay_then(self, events: list[AuditEvent]) -> "Replay":
        """Replay the spool, then `events`, in one transaction, holding the spool meanwhile
        (the events the database refuses are moved to the rejected file)."""
        set_aside: list[tuple[AuditEvent, str]] = []
        with self.spool.draining() as drain:
            with self.engine.connect() as connection:
                waiting = _not_yet_written(connection, drain.events)
            # Written with them: the spool has drained, and how many it held.
            marker = [_replayed(len(waiting))] if waiting else []
            ids = self._commit_each_that_fits([*waiting, *marker, *events], set_aside)
            drain.done()
        replayed = sum(row_id is not None for row_id in ids[: len(waiting)])
        if waiting:
            logger.warning("replayed %d spooled audit events", replayed)
        return Replay(replayed, set_aside, ids[len(waiting) + len(marker) :])

    def _commit_each_that_fits(
        self,
        events: list[AuditEvent],
        set_aside: list[tuple[AuditEvent, str]],
        more: chain.More | None = None,
    ) -> list[int | None]:
        """Append and commit `events` in order (with what `more` adds to them, see
        `_joining`), in one transaction unless the database refuses one for its content: then
        the batch is halved until that event stands alone, every other is committed, and it is
        set aside (added to `set_aside` with the database's reason). The ids, None for an event
        set aside."""
        if not events:
            return []
        try:
            return self._append_and_commit(events, more)
        except refusals.REFUSALS as error:
            if len(events) == 1:
                set_aside.append((events[0], self._set_aside(events[0], error)))
                return [None]
            half = len(events) // 2
            return self._commit_each_that_fits(
                events[:half], set_aside
            ) + self._commit_each_that_fits(events[half:], set_aside)

    def _set_aside(self, event: AuditEvent, error: BaseException) -> str:
        """Record that the database refused `event`, then keep it in the rejected file;
        return the database's reason."""
        why = refusals.reason(error)
        try:
            self._append_and_commit([refusals.rejection(event, why, self.spool.rejected_path.name)])
        except refusals.REFUSALS:
            # Refusing even this row, the database refuses every event, not this one's
            # content (a chain head behind its rows, a broken constraint): an outage, spooled.
            logger.error("the database refuses the record of a refused event too")
            raise error from None
        logger.error(
            "the database refused audit event %s; set aside in %s: %s",
            event.event_id,
            self.spool.rejected_path,
            why,
        )
        try:
            self.spool.set_aside(event)
        except OSError:
            logger.exception("could not set aside audit event %s", event.event_id)
            raise AuditUnavailable() from None
        return why

    def _append_and_commit(
        self, events: list[AuditEvent], more: chain.More | None = None
    ) -> list[int]:
        self.list_key()
        signing = (self.key, self.checkpoint_every, self.signer)
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:
                return chain.append(connection, events, *signing, more=more)
        # PostgreSQL: two round trips on the driver's connection (chain.append_and_commit).
        with autocommit_connection(self.engine) as connection:
            return chain.append_and_commit(connection, events, *signing, more=more)

    def list_key(self) -> None:
        """List the tree-head key's public half before its first head (once a process)."""
        if not self._key_listed:
            with self.engine.begin() as connection:
                signing.register(connection, self.signer, utcnow())
            self._key_listed = True

    def replay(self) -> "Replay":
        """Write every spooled event (`flask audit replay`): how many were written, and which
        the database refused (set aside)."""
        return self._replay_then([])

    def forget_connections(self, close: bool = True) -> None:
        """Empty the engine's pool (closing the connections unless `close` is False: a forked
        worker's are its parent's too) and start an empty group-commit line."""
        self.engine.dispose(close=close)
        self.group = GroupCommit(self.write_batch)


def _joining(events: list[AuditEvent], more: chain.More | None) -> chain.More | None:
    """`more`, adding what it gives to `events`: a batch that fails or is halved afterwards
    (spooled, refused) goes on with them in it."""
    if more is None:
        return None

    def joined() -> list[AuditEvent]:
        extra = more()
        events.extend(extra)
        return extra

    return joined


@dataclass
class Replay:
    """What a replay of the spool did."""

    replayed: int  # spooled events now in the trail
    set_aside: list[tuple[AuditEvent, str]]  # refused by the database, and its reason
    ids: list[int | None]  # of the events written after the spool's


def _spooling(failure: BaseException, at: datetime) -> AuditEvent:
    """The first event of an outage, spooled before the events it kept, and dated as the first
    of them (`at`): later, it would move their times on when the chain replays them."""
    why = refusals.reason(failure)
    track = f"the database cannot take audit events; keeping them in the spool: {why}"
    reason = "broken_head" if isinstance(failure, chain.BrokenHead) else "database_unavailable"
    details = {"reason": reason, "error": why}
    return _trail_event("audit.spooling", "ERROR", track, details, outcome="error", created_at=at)


def _replayed(count: int) -> AuditEvent:
    """Written right after the events a replay took from the spool."""
    events = "event" if count == 1 else "events"
    track = f"the database is back: {count} spooled {events} replayed in order"
    return _trail_event("audit.replayed", "WARNING", track, {"replayed": count})


def _trail_event(event: str, level: str, track: str, details: dict, **more) -> AuditEvent:
    return AuditEvent(
        source="system",
        event=event,
        level=level,
        track=track,
        target_type="trail",
        details=details,
        **more,
    )


def _not_yet_written(connection: sa.Connection, events: list[AuditEvent]) -> list[AuditEvent]:
    done = chain.existing_event_ids(connection, [e.event_id for e in events])
    return [e for e in events if e.event_id not in done]


# Keeps the pending list of `q`'s trigram index short, which every search reads in full; a
# session setting, as ALTER INDEX would lock (figures: docs/benchmarks.md, "Tuning decisions").
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
    engine = sa.create_engine(
        url,
        pool_size=4,
        connect_args={
            "connect_timeout": 5,
            "options": "-c lock_timeout=5000 -c statement_timeout=10000"
            f" -c gin_pending_list_limit={PENDING_LIST_LIMIT}",
        },
    )
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
