"""An audit event, and the parts of the request every event carries."""

import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime

from flask import Response, g, has_request_context, request

from backend.clock import utcnow

TRACK_MAX = 2000
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class AuditEvent:
    """One row of the trail, before it has an id."""

    source: str
    event: str
    level: str
    track: str
    user: str | None = None
    status: int | None = None
    ip: str | None = None
    method: str | None = None
    path: str | None = None
    request_id: str | None = None
    user_agent: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    # Names the event across retries: a replay from the spool never writes it twice.
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def as_row(self) -> dict:
        """The column values of the `audit_log` row.

        NUL (which PostgreSQL text cannot hold) and lone surrogates (which no UTF-8 encoder
        takes, e.g. from JSON's "\\ud800") are stored as U+FFFD on every database: an event
        the database can never take would stay first in the spool and hold back every later one.
        """
        row = {}
        for name in FIELDS:  # not dataclasses.asdict: its deep copies cost more than the rest
            value = getattr(self, name)
            row[name] = storable(value) if isinstance(value, str) else value
        return row


FIELDS = tuple(field.name for field in fields(AuditEvent))


def storable(text: str) -> str:
    """`text` with what no database or UTF-8 file can hold replaced by U+FFFD."""
    return _UNSTORABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def event_from_signal(source: str, *, event: str, level: str = "INFO", track: str = "",
                      user: str | None = None, status: int | None = None,
                      request: dict | None = None) -> AuditEvent:
    """Combine what a signal said with who asked and how (nothing outside a request).

    `request`: the request_fields() of a request that is over, for an event announced after
    its response began (the end of a streamed export)."""
    return AuditEvent(source=source, event=event, level=level, track=track[:TRACK_MAX],
                      user=(user or None) and user[:64], status=status,
                      **(request_fields() if request is None else request))


def request_fields() -> dict:
    """Client address (after ProxyFix), method, path, request id and user agent."""
    if not has_request_context():
        return {}
    current = request._get_current_object()  # one proxy lookup, not five
    return {
        "ip": current.remote_addr,
        "method": current.method[:16],
        "path": current.path[:2048],
        "request_id": g.get("request_id"),
        "user_agent": current.environ.get("HTTP_USER_AGENT", "")[:512] or None,
    }


def level_for_status(status: int) -> str:
    """INFO for 2xx/3xx, WARNING for 4xx, ERROR for 5xx."""
    if status >= 500:
        return "ERROR"
    return "WARNING" if status >= 400 else "INFO"


def assign_request_id() -> None:
    """Give the request an id that its audit rows and its response share."""
    g.request_id = uuid.uuid4().hex


def echo_request_id(response: Response) -> Response:
    """Return the request id as `X-Request-ID`, so a client can find its rows."""
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    return response
