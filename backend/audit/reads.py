"""Where reads of the trail go: a PostgreSQL hot standby (DATABASE_REPLICA_URL) while it
answers, else the primary.

Lists, one row, stats, exports, proofs and a stream's catch-up read through `reading_engine`;
writes (the audit writer has its own engine), logins, lockouts, tokens and users never do, and
a standby would refuse them.

A standby lags, but never out of order. Ids are given out under the chain's lock, which is
held until the commit, so rows commit in id order; a standby replays the commits in the order
of the primary's WAL, so what it shows is always every row up to some id, and nothing beyond.
A cursor's page continues from its row: newest-first, every older row is there once the
cursor's own row is; oldest-first, a newer row not yet replayed comes on a later page. So a
page continues on the standby only when the standby holds the cursor's row (its newest id is
at least the cursor's); a cursor made on the primary (while the standby was down, or by a
page that fell back) that the standby has not reached yet is read on the primary instead.
"""

import logging
import time

import sqlalchemy as sa
from flask import Flask, current_app

from backend.db_types import discard_closed_connections
from backend.extensions import db
from backend.models import Log

logger = logging.getLogger(__name__)

# Seconds a standby that failed to answer is left alone (reads go to the primary) before the
# next request tries it again: a dead standby costs one failed connect per interval, not one
# per request.
RETRY_AFTER = 5.0
# Seconds to wait for a standby's connection before falling back to the primary.
CONNECT_TIMEOUT = 2


class TrailReads:
    """One per app: the standby's engine (None without DATABASE_REPLICA_URL), and whether it
    answered when last tried."""

    def __init__(self, app: Flask):
        url = app.config.get("DATABASE_REPLICA_URL")
        self.engine = _standby_engine(url, app.config["SQLALCHEMY_ENGINE_OPTIONS"]) if url else None
        self._failed_at: float | None = None

    @property
    def configured(self) -> bool:
        """A standby is configured (DATABASE_REPLICA_URL)."""
        return self.engine is not None

    def engine_for(self, primary: sa.Engine, up_to_id: int | None = None) -> sa.Engine:
        """The standby's engine when it answers and (given `up_to_id`) holds that row's id,
        else `primary`."""
        if self.engine is None or self._resting():
            return primary
        try:
            with self.engine.connect() as connection:
                if up_to_id is not None:
                    newest = connection.scalar(sa.select(sa.func.max(Log.id)))
                    if (newest or 0) < up_to_id:
                        return primary  # lagging behind this cursor: see the module's docstring
        except sa.exc.DBAPIError as error:
            logger.warning("the standby does not answer; reads go to the primary: %s", error)
            self._failed_at = time.monotonic()
            return primary
        self._failed_at = None
        return self.engine

    def _resting(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER

    def dispose(self, close: bool = True) -> None:
        if self.engine is not None:
            self.engine.dispose(close=close)


def _standby_engine(url: str, options: dict) -> sa.Engine:
    engine = sa.create_engine(
        url,
        **options,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            # A standby refuses writes anyway; this says so on the primary, should the URL
            # ever name one by mistake.
            "options": "-c default_transaction_read_only=on",
        },
    )
    discard_closed_connections(engine)
    return engine


def init_app(app: Flask) -> None:
    """Give the app its reads (the factory calls this)."""
    app.extensions["audit_reads"] = TrailReads(app)


def reads() -> TrailReads:
    """The current app's reads."""
    return current_app.extensions["audit_reads"]


def reading_engine(up_to_id: int | None = None) -> sa.Engine:
    """The engine for a read of the trail: the standby's while it answers (and holds row
    `up_to_id`, when given), else the primary's."""
    return reads().engine_for(db.engine, up_to_id)
