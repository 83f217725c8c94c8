"""Durable audit writes, in a transaction of their own.

Never the request's `db.session`: a view that rolls back must not take its audit row with it,
and the audit commit must not commit a view's half-done work. The row is committed before
`write` returns, so before the response leaves; when it cannot be, the request fails closed
with 503 rather than answering without its record.
"""

import logging

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import ServiceUnavailable

from backend.audit.events import AuditEvent
from backend.extensions import db
from backend.models import Log

logger = logging.getLogger(__name__)

_INSERT = sa.insert(Log).returning(Log.id)


class AuditUnavailable(ServiceUnavailable):
    """The trail could not take an event, so the request must not succeed."""

    description = "The audit trail cannot record this request right now; try again later."


def write(event: AuditEvent) -> int:
    """Commit `event` as one row and return its id; raise AuditUnavailable if that fails."""
    try:
        with db.engine.begin() as connection:
            return connection.execute(_INSERT, event.as_row()).scalar_one()
    except SQLAlchemyError:
        logger.exception("audit write failed for %s/%s", event.source, event.event)
        raise AuditUnavailable() from None
