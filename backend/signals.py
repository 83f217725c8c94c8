"""The audit signals, and `announce()`: the one way the code says what happened.

A view announces an act on its blueprint's signal; the subscribers in `backend.audit`, which no
view imports, turn it into a row. Announcing raises `AuditUnavailable` (a 503) when the trail
can take the row neither in the database nor in the spool: the act is then not answered as done.
"""

from blinker import NamedSignal, Namespace
from flask import Flask, current_app, got_request_exception

log_signals = Namespace()
auth_log = log_signals.signal("auth_log", doc="Sent by the auth blueprint: logins, logouts.")
v1_log = log_signals.signal("v1_log", doc="Sent for every /v1 request and the acts it performs.")
main_log = log_signals.signal("main_log", doc="Sent by the main blueprint.")


def announce(
    signal: NamedSignal,
    event: str,
    *,
    level: str,
    status: int,
    track: str,
    user: str | None = None,
    request: tuple[dict, str] | None = None,
) -> None:
    """Send `signal` from the app: `event` (`login.failure`), its `level`, the response's
    `status` and what happened (`track`), by `user` if anyone signed in.

    `request`: the `request_fields()` of a request that is over, for an act announced after
    its response began (the end of a streamed export); otherwise the current request's.
    """
    about = {"event": event, "level": level, "status": status, "track": track}
    if user is not None:
        about["user"] = user
    if request is not None:
        about["request"] = request
    signal.send(_app(), **about)


def announce_exception(exception: BaseException, *, status: int) -> None:
    """An exception that ended the request with `status` although a handler answered it, on
    the record as Flask records an unhandled one (its `got_request_exception`)."""
    got_request_exception.send(_app(), exception=exception, status=status)


def _app() -> Flask:
    """The app itself, never the `current_app` proxy: receivers connected for one app (a test's
    `connected_to(receiver, app)`) compare the sender by identity."""
    return current_app._get_current_object()
