"""The audit signals, and `announce()`: the one way the code says what happened.

A view announces an act on its blueprint's signal; the subscribers in `backend.audit`, which no
view imports, turn it into a row. Announcing raises `AuditUnavailable` (a 503) when the trail
can take the row neither in the database nor in the spool: the act is then not answered as done.
"""

from typing import NamedTuple

from blinker import NamedSignal, Namespace
from flask import Flask, current_app, got_request_exception

log_signals = Namespace()
auth_log = log_signals.signal("auth_log", doc="Sent by the auth blueprint: logins, logouts.")
v1_log = log_signals.signal("v1_log", doc="Sent for every /v1 request and the acts it performs.")
main_log = log_signals.signal("main_log", doc="Sent by the main blueprint.")


class Target(NamedTuple):
    """What an act was done to: its kind (`user`, `token`, `trail`, `service`, `sink`...), its
    id, and its name at the time (a username)."""

    type: str
    id: str | int | None = None
    name: str | None = None


# What an announcement may say besides its event, level, status and track (the subscriber,
# backend.audit.subscribers.event_from_signal, declares each with its default).
FACTS = frozenset(
    {"user", "actor_id", "outcome", "target", "changes", "reason", "details", "request"}
)


def announce(
    signal: NamedSignal, event: str, *, level: str, status: int | None, track: str, **facts
) -> None:
    """Send `signal` from the app: `event` (`login.failure`), its `level`, the response's
    `status` and what happened (`track`), with these `facts` where they apply:

    - `user`: who acted, if anyone signed in (`actor_id`: their id, when the request's bearer
      token does not tell it);
    - the structured record (CONTRACT.md): the `target` acted on (a `Target`); the `outcome`
      (by default what the status says, `backend.audit.events.outcome_for_status`); `changes`
      made (`{"field": [old, new]}`); a failure's machine-readable `reason`
      (`invalid_password`); other `details`. Secrets in them are redacted when the row is made;
    - `request`: the `request_fields()` of a request that is over, for an act announced after
      its response began (the end of a streamed export); otherwise the current request's.
    """
    unknown = facts.keys() - FACTS
    if unknown:
        raise TypeError(f"announce() got unknown facts: {', '.join(sorted(unknown))}")
    about = {"event": event, "level": level, "status": status, "track": track}
    about.update((name, value) for name, value in facts.items() if value is not None)
    signal.send(_app(), **about)


def announces(*events: str):
    """Mark a view that changes something as announcing `events` (tests/test_structured_record.py
    walks the URL map: a mutating route without this mark fails it)."""

    def mark(view):
        view.announces = events
        return view

    return mark


def announce_exception(exception: BaseException, *, status: int) -> None:
    """An exception that ended the request with `status` although a handler answered it, on
    the record as Flask records an unhandled one (its `got_request_exception`)."""
    got_request_exception.send(_app(), exception=exception, status=status)


def _app() -> Flask:
    """The app itself, never the `current_app` proxy: receivers connected for one app (a test's
    `connected_to(receiver, app)`) compare the sender by identity."""
    return current_app._get_current_object()
