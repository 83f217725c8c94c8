"""Receivers that turn signals into audit rows.

They are connected by decorator at module level on purpose: blinker holds receivers weakly,
so a receiver defined inside a function would be collected and silently stop recording.
Importing this module (the app factory does) is what connects them.
"""

import logging

from flask import got_request_exception
from sqlalchemy.exc import SQLAlchemyError, StatementError

from backend.audit.events import event_from_signal
from backend.audit.group_commit import AuditUnavailable
from backend.audit.writer import write
from backend.extensions import auth_log, main_log, token_auth, v1_log

logger = logging.getLogger(__name__)


@auth_log.connect
def record_auth_event(sender, **event) -> None:
    """Logins, failed logins and logouts."""
    write(event_from_signal("auth", **event))


@v1_log.connect
def record_v1_event(sender, **event) -> None:
    """Every /v1 request (api.request) and the acts done through the API."""
    write(event_from_signal("v1", **event))


@main_log.connect
def record_main_event(sender, **event) -> None:
    """Events of the main blueprint."""
    write(event_from_signal("main", **event))


@got_request_exception.connect
def record_request_exception(sender, exception: BaseException, status: int = 500,
                             **extra) -> None:
    """An exception that ended the request: its class and message, at ERROR. `status` is the
    response's: Flask sends none for an unhandled exception (a 500); errors.py sends 503 for a
    database that could not be reached.

    The response is what it is whatever happens here, so a failed write is logged, not raised.
    """
    try:
        username = getattr(token_auth.current_user(), "username", None)
    except SQLAlchemyError:  # a login's user (an ORM object, expired by a commit) cannot be
        username = None  # reloaded when the database is what failed (it went away mid-request)
    # A StatementError's text carries the SQL and its parameters; the driver's message is enough.
    cause = exception
    if isinstance(exception, StatementError) and exception.orig is not None:
        cause = exception.orig
    track = f"{type(exception).__module__}.{type(exception).__qualname__}: {cause}"
    try:
        write(event_from_signal("app", event="request.exception", level="ERROR", track=track,
                                user=username, status=status))
    except AuditUnavailable:
        logger.error("could not record request.exception: %s", track)
