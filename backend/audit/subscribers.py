"""Receivers that turn signals into audit rows.

They are connected by decorator at module level on purpose: blinker holds receivers weakly,
so a receiver defined inside a function would be collected and silently stop recording.
Importing this module (the app factory does) is what connects them. The three audit signals
share one body, `record`: only the row's `source` tells them apart.
"""

import logging
import os

from flask import got_request_exception
from sqlalchemy.exc import SQLAlchemyError, StatementError

from backend.audit.events import (
    TRACK_MAX,
    AuditEvent,
    outcome_for_status,
    request_fields,
)
from backend.audit.group_commit import AuditUnavailable
from backend.audit.writer import write
from backend.extensions import token_auth
from backend.signals import Target, auth_log, main_log, v1_log

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


def event_from_signal(
    source: str,
    *,
    event: str,
    level: str = "INFO",
    track: str = "",
    user: str | None = None,
    status: int | None = None,
    actor_id: int | None = None,
    outcome: str | None = None,
    target: Target | None = None,
    changes: dict | None = None,
    reason: str | None = None,
    details: dict | None = None,
    request: tuple[dict, str] | None = None,
) -> AuditEvent:
    """The row of an announcement (`backend.signals.announce`), with who asked and how (nothing
    outside a request): the request's bearer token names the actor's id and the token's.

    `request`: the request_fields() of a request that is over, for an event announced after
    its response began (the end of a streamed export)."""
    context, note = request_fields() if request is None else request
    context = dict(context)
    caller, token_id = context.pop("caller", None), None
    if caller is not None and user is not None and caller.username == user:
        actor_id, token_id = actor_id or caller.id, caller.token_id
    facts = dict(details or {})
    if changes is not None:
        facts["changes"] = changes
    if reason is not None:
        facts["reason"] = reason
    target = target or Target(None)
    return AuditEvent(
        source=source,
        event=event,
        level=level,
        track=track[: TRACK_MAX - len(note)] + note,
        user=user or None,
        status=status,
        actor_id=actor_id,
        token_id=token_id,
        target_type=target.type,
        target_id=None if target.id is None else str(target.id),
        target=target.name,
        outcome=outcome or outcome_for_status(status, level),
        details=facts,
        **context,
    )


def record_service(app, event: str, track: str, **facts) -> None:
    """A row of the service itself (source `system`): by default `service.start` or
    `service.stop` of this worker process; `facts` are announce()'s (`level`, `outcome`,
    `target`, `details`...) for the relay's rows. Logged rather than raised when the trail
    cannot take it: a worker serves or stops, and the relay delivers, either way."""
    facts.setdefault("target", Target("service", os.getpid()))
    facts.setdefault("details", {"pid": os.getpid()})
    with app.app_context():
        try:
            write(event_from_signal("system", event=event, track=track, **facts))
        except AuditUnavailable:
            logger.error("could not record %s: %s", event, track)


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
