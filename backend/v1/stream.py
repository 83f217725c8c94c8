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

A stream is a read of the trail: when it ends, a `trail.stream` row says how (the client left,
its token stopped being valid, an error), the rows it sent and its filters, written by
export_guard.ReadEnd as an export's `trail.export` row is.
"""

import threading
import time
from collections.abc import Iterator

from apifairy import arguments, authenticate, other_responses
from flask import Response, current_app, request, stream_with_context
from marshmallow import RAISE
from werkzeug.exceptions import ServiceUnavailable

from backend.audit import follow
from backend.audit.reads import reading_engine
from backend.auth.credentials import verify_token
from backend.errors import BAD_PARAMETER, UNAUTHORIZED, ValidationFailed
from backend.extensions import db, token_auth
from backend.schemas import ErrorSchema, LogStreamQuerySchema
from backend.v1 import bp
from backend.v1.export_guard import ReadEnd
from backend.v1.logs import note_read

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
        viewer = token_auth.current_user()
        sent = StreamSent(viewer, note_read(args), after_id)
        events = _events(args, viewer, token_auth.get_auth().token, sent)
    except BaseException:
        slot.release()
        raise
    return Response(
        stream_with_context(_released(events, slot, sent)),
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class StreamSent:
    """What a stream has sent, for its `trail.stream` row: the rows (each counted once the
    server has taken it), from where to where, and why it ended."""

    def __init__(self, viewer, filters: dict, after_id: int):
        self.end = ReadEnd("trail.stream", viewer)
        self.filters = filters
        self.first_after = after_id
        self.last_id = after_id
        self.rows = 0
        self.ended = "client_left"  # a stream has no end of its own: its client closes it

    def taken(self, rows: list[tuple[int, str]]) -> None:
        """The server took these rows (the generator was resumed after yielding them)."""
        self.rows += len(rows)
        self.last_id = rows[-1][0]

    def record(self) -> None:
        """Write the `trail.stream` row."""
        sent = f"{self.rows} row{'' if self.rows == 1 else 's'} sent"
        level, outcome, reason, why = {
            "client_left": ("INFO", "success", None, "the client left"),
            "token_invalid": ("WARNING", "denied", "token_invalid", "its token is no longer valid"),
            "error": ("ERROR", "error", None, "an error"),
        }[self.ended]
        details = {
            "filters": self.filters,
            "rows": self.rows,
            "after_id": self.first_after,
            "last_id": self.last_id,
            "ended": self.ended,
        }
        self.end.record(
            f"ended, {why}: {sent}", level=level, outcome=outcome, reason=reason, details=details
        )


def _worker_slots() -> threading.BoundedSemaphore:
    """This app's bound on streams (one app per worker process)."""
    key = id(current_app._get_current_object())
    if key not in _slots:
        _slots[key] = threading.BoundedSemaphore(current_app.config["STREAMS_PER_WORKER"])
    return _slots[key]


def _released(
    events: Iterator[str], slot: threading.BoundedSemaphore, sent: StreamSent
) -> Iterator[str]:
    try:
        yield from events
    except Exception:
        sent.ended = "error"
        raise
    finally:  # the client left (the server closes the generator), or the token died
        slot.release()
        sent.record()


def _events(filters: dict, viewer, token: str, sent: StreamSent) -> Iterator[str]:
    """The stream's text: a first comment at once, then rows and heartbeats."""
    config = current_app.config
    poll, heartbeat = config["STREAM_POLL_SECONDS"], config["STREAM_HEARTBEAT_SECONDS"]
    after_id = sent.last_id
    yield ": stream of the audit trail\nretry: 2000\n\n"
    quiet_since = time.monotonic()
    catching_up = True
    while True:
        # The rows behind the client's position are read on the standby when there is one
        # that holds that position (reads.py: it shows every row up to some id, so a short
        # batch there skips nothing); once a batch comes short, the stream is live, on the
        # primary.
        engine = reading_engine(up_to_id=after_id) if catching_up else db.engine
        rows = follow.rows_after(engine, filters, viewer, after_id, BATCH)
        catching_up = len(rows) == BATCH
        if rows:
            after_id = rows[-1][0]
            yield "".join(f"id: {row_id}\nevent: log\ndata: {line}\n\n" for row_id, line in rows)
            sent.taken(rows)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= heartbeat:
            if verify_token(token) is None:
                sent.ended = "token_invalid"
                return
            yield ": heartbeat\n\n"
            quiet_since = time.monotonic()
        if len(rows) < BATCH:
            time.sleep(poll)  # a gevent worker's sleep: its other requests run meanwhile
