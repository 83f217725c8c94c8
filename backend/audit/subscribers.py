"""Receivers that turn signals into audit rows.

They are connected by decorator at module level on purpose: blinker holds receivers weakly,
so a receiver defined inside a function would be collected and silently stop recording.
Importing this module (the app factory does) is what connects them. The three audit signals
share one body, `record`: only the row's `source` tells them apart.
"""

import logging

from flask import got_request_exception
from sqlalchemy.exc import SQLAlchemyError, StatementError

from backend.audit.events import event_from_signal
from backend.audit.group_commit import AuditUnavailable
from backend.audit.writer import write
from backend.extensions import token_auth
from backend.signals import auth_log, main_log, v1_log

logger = logging.getLogger(__name__)


@auth_log.connect
def record_auth_event(sender, **event) -> None:
    """Logins, failed logins and logouts."""
    record("auth", **event)


@v1_log.connect
def record_v1_event(sender, **event) -> None:
    """Every /v1 request (api.request) and the acts done through the API."""
    record("v1", **event)


@main_log.connect
def record_main_event(sender, **event) -> None:
    """Events of the main blueprint: page views."""
    record("main", **event)


def record(source: str, **event) -> None:
    """Write what a signal of `source` announced (`backend.signals.announce`), with the
    request's context, as one row; AuditUnavailable if the trail cannot take it."""
    write(event_from_signal(source, **event))


@got_request_exception.connect
def record_request_exception(sender, exception: BaseException, status: int = 500, **extra) -> None:
    """An exception that ended the request: its class and message, at ERROR. `status` is the
    response's: Flask sends none for an unhandled exception (a 500); errors.py announces 503 for
    a database that could not be reached (`backend.signals.announce_exception`).

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
        record(
            "app",
            event="request.exception",
            level="ERROR",
            track=track,
            user=username,
            status=status,
        )
    except AuditUnavailable:
        logger.error("could not record request.exception: %s", track)
