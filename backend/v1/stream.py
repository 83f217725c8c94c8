"""/v1/logs/stream: the trail as it grows, as Server-Sent Events.

Each row is an event `id: <row id>`, `event: log`, `data: <the export's JSON row>`; a client
that reconnects sends `Last-Event-ID` (EventSource does) or `?after_id=`, and gets every row
after it. Without either the stream starts at the newest row: what comes next.

Built for gunicorn's gevent workers: the stream polls with one short query every
STREAM_POLL_SECONDS on a pooled connection it gives back at once, so a thousand idle streams
hold no connection; a comment line goes out at least every STREAM_HEARTBEAT_SECONDS (proxies
and load balancers close a silent connection), and then the token is checked again, so a
revoked token ends its streams. A worker serves at most STREAMS_PER_WORKER streams: one more
is a 503 with `Retry-After`.
"""

import threading
import time
from collections.abc import Iterator

from apifairy import arguments, authenticate, other_responses
from flask import Response, current_app, request, stream_with_context
from marshmallow import RAISE
from werkzeug.exceptions import ServiceUnavailable

from backend.audit import follow
from backend.auth.credentials import verify_token
from backend.errors import BAD_PARAMETER, UNAUTHORIZED, ValidationFailed
from backend.extensions import db, token_auth
from backend.schemas import ErrorSchema, LogStreamQuerySchema
from backend.v1 import bp

BATCH = 500
RETRY_AFTER = 5  # seconds, for a client refused a stream
_slots: dict[int, threading.BoundedSemaphore] = {}


@bp.get("/logs/stream")
@authenticate(token_auth)
@arguments(LogStreamQuerySchema, unknown=RAISE)
@other_responses(
    {
        200: "Server-Sent Events: `id`, `event: log`, `data: <row>`; `: heartbeat` comments",
        **UNAUTHORIZED,
        **BAD_PARAMETER,
        503: (ErrorSchema, "Too many streams in this worker; see `Retry-After`"),
    }
)
def stream_logs(args: dict):
    """Follow the audit trail live (Server-Sent Events)

    The filters and visibility rule of `GET /v1/logs`. Rows after `Last-Event-ID` (or
    `after_id`) in id order, then each new row as it is committed; without either, only new
    rows. A `: heartbeat` comment at least every 15 seconds.
    """
    after_id = args.pop("after_id", None)
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        if not header.isdigit() or len(header) > 18:
            raise ValidationFailed({"Last-Event-ID": ["must be a row id"]})
        after_id = int(header)
    slot = _worker_slots()
    if not slot.acquire(blocking=False):
        raise ServiceUnavailable(
            "Too many live streams in this worker; try again shortly.", retry_after=RETRY_AFTER
        )
    try:
        if after_id is None:
            with db.engine.connect() as connection:
                after_id = follow.newest_id(connection)
        events = _events(args, token_auth.current_user(), token_auth.get_auth().token, after_id)
    except BaseException:
        slot.release()
        raise
    return Response(
        stream_with_context(_released(events, slot)),
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _worker_slots() -> threading.BoundedSemaphore:
    """This app's bound on streams (one app per worker process)."""
    key = id(current_app._get_current_object())
    if key not in _slots:
        _slots[key] = threading.BoundedSemaphore(current_app.config["STREAMS_PER_WORKER"])
    return _slots[key]


def _released(events: Iterator[str], slot: threading.BoundedSemaphore) -> Iterator[str]:
    try:
        yield from events
    finally:  # the client left (the server closes the generator), or the token died
        slot.release()


def _events(filters: dict, viewer, token: str, after_id: int) -> Iterator[str]:
    """The stream's text: a first comment at once, then rows and heartbeats."""
    config = current_app.config
    poll, heartbeat = config["STREAM_POLL_SECONDS"], config["STREAM_HEARTBEAT_SECONDS"]
    engine = db.engine
    yield ": stream of the audit trail\nretry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        rows = follow.rows_after(engine, filters, viewer, after_id, BATCH)
        if rows:
            after_id = rows[-1][0]
            yield "".join(f"id: {row_id}\nevent: log\ndata: {line}\n\n" for row_id, line in rows)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= heartbeat:
            if verify_token(token) is None:
                return
            yield ": heartbeat\n\n"
            quiet_since = time.monotonic()
        if len(rows) < BATCH:
            time.sleep(poll)  # a gevent worker's sleep: its other requests run meanwhile
