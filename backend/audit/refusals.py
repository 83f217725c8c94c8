"""Events the database refuses for what they hold: no single event can stop the trail.

A refusal is an error of the data-exception or integrity-constraint classes (SQLSTATE 22 and
23: a value too long, out of range, not of its type, a CHECK that fails) on the event itself,
as opposed to the database being away, locked or full. Retried, it would fail forever; kept
first in the spool, it would hold back every later event. So the writer (writer.py) finds the
refused event in its batch, records an `audit.rejected` row in its place (`rejection`), and sets
the event aside in the spool's `.rejected` file (spool.py) for a person; every other event flows.
"""

import psycopg
import sqlalchemy as sa

from backend.audit import partitions
from backend.audit.events import AuditEvent

# What the database says when it refuses an event's content; anything else of the driver's
# (away, a lock or statement timeout, a full disk) is an outage, and the event is spooled.
REFUSALS = (sa.exc.DataError, sa.exc.IntegrityError, psycopg.DataError, psycopg.IntegrityError)
REASON_MAX = 300


def reason(error: BaseException) -> str:
    """The database's own one-line message: no SQL, no parameters (SQLAlchemy's text of an
    error carries both), at most REASON_MAX characters."""
    cause = getattr(error, "orig", None) or error
    diag = getattr(cause, "diag", None)  # psycopg: the server's primary message alone
    message = (diag.message_primary if diag is not None else None) or str(cause)
    lines = partitions.naming_the_trail(message).strip().splitlines()
    return (lines[0] if lines else type(cause).__name__)[:REASON_MAX]


def rejection(event: AuditEvent, why: str, kept_in: str) -> AuditEvent:
    """The row that says `event` was refused by the database and set aside in `kept_in`."""
    return AuditEvent(
        source="app",
        event="audit.rejected",
        level="ERROR",
        track=f"the database refused event {event.event_id}"
        f" ({event.source}/{event.event}); set aside in {kept_in}: {why}",
        outcome="error",
        details={"reason": "refused_by_database", "event_id": str(event.event_id)},
    )
