"""An audit event, and the parts of the request every event carries."""

import ipaddress
import json
import re
import uuid
from dataclasses import field as dataclass_field
from dataclasses import fields, make_dataclass

from flask import Response, g, has_request_context, request

from backend.models import AUDIT_FIELDS, AuditField

TRACK_MAX = 2000
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# How many characters of a client address that is not one the track quotes.
ADDRESS_QUOTED_MAX = 100


def _as_row(self) -> dict:
    """The column values of the `audit_log` row.

    NUL (which PostgreSQL text cannot hold) and lone surrogates (which no UTF-8 encoder
    takes, e.g. from JSON's "\\ud800") are stored as U+FFFD on every database, and a string
    is cut to its column's length (COLUMN_LENGTHS): an event the database refuses would
    have to be set aside (writer.py), where it is read by a person, not queried.
    """
    row = {}
    for name in FIELDS:  # not dataclasses.asdict: its deep copies cost more than the rest
        value = getattr(self, name)
        if isinstance(value, str):
            value = storable(value)[: COLUMN_LENGTHS.get(name)]
        row[name] = value
    return row


def _event_field(spec: AuditField) -> tuple:
    """An AuditEvent field of `spec`: required, None by default when nullable, or made."""
    kind = spec.type.python_type | None if spec.nullable else spec.type.python_type
    if spec.default_factory is not None:
        return spec.name, kind, dataclass_field(default_factory=spec.default_factory)
    if spec.nullable:
        return spec.name, kind, dataclass_field(default=None)
    return spec.name, kind


# One row of the trail before it has an id: the fields of models.AUDIT_FIELDS that the chain
# does not give (keyword arguments only).
AuditEvent = make_dataclass(
    "AuditEvent",
    [_event_field(spec) for spec in AUDIT_FIELDS if not spec.by_chain],
    namespace={
        "as_row": _as_row,
        "__module__": __name__,
        "__doc__": "One row of the trail, before it has an id.",
    },
    frozen=True,
    kw_only=True,
)
FIELDS = tuple(spec.name for spec in fields(AuditEvent))
# The length of each bounded text column of the trail (varchar(n) on PostgreSQL), read from the
# declaration so that a migration that widens a column widens what is stored.
COLUMN_LENGTHS = {
    spec.name: spec.type.length
    for spec in AUDIT_FIELDS
    if not spec.by_chain and getattr(spec.type, "length", None)
}


def storable(text: str) -> str:
    """`text` with what no database or UTF-8 file can hold replaced by U+FFFD."""
    return _UNSTORABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def event_from_signal(
    source: str,
    *,
    event: str,
    level: str = "INFO",
    track: str = "",
    user: str | None = None,
    status: int | None = None,
    request: tuple[dict, str] | None = None,
) -> AuditEvent:
    """Combine what a signal said with who asked and how (nothing outside a request).

    `request`: the request_fields() of a request that is over, for an event announced after
    its response began (the end of a streamed export)."""
    context, note = request_fields() if request is None else request
    return AuditEvent(
        source=source,
        event=event,
        level=level,
        track=track[: TRACK_MAX - len(note)] + note,
        user=user or None,
        status=status,
        **context,
    )


def request_fields() -> tuple[dict, str]:
    """Client address (after ProxyFix), method, path, request id and user agent; and what the
    track should add about them: a client address that is not an IP address, quoted."""
    if not has_request_context():
        return {}, ""
    current = request._get_current_object()  # one proxy lookup, not five
    address = header_text(current.remote_addr or "")
    ip, note = ip_address_or_none(address), ""
    if ip is None and address:
        # A proxy we trust passed on what a client wrote. Kept, quoted, for a person to see;
        # it moves to `details` when the trail gains that field (CONTRACT.md, second release).
        note = f" [client address is not an IP address: {json.dumps(address[:ADDRESS_QUOTED_MAX])}]"
    return {
        "ip": ip,
        "method": current.method,
        "path": current.path,
        "request_id": g.get("request_id"),
        "user_agent": header_text(current.environ.get("HTTP_USER_AGENT", "")) or None,
    }, note


def header_text(value: str) -> str:
    """A header's text: WSGI hands header bytes over decoded as Latin-1 (PEP 3333), so a UTF-8
    header arrives as mojibake; these are its bytes decoded as UTF-8, invalid bytes as U+FFFD.
    (A value that Latin-1 cannot encode was never bytes: a test's environ. It stays as is.)"""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value
    return raw.decode("utf-8", errors="replace")


def ip_address_or_none(text: str) -> str | None:
    """`text` if it is an IPv4 or IPv6 address that fits the `ip` column, else None (whatever
    else a proxy passed on from X-Forwarded-For)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text if len(text) <= COLUMN_LENGTHS["ip"] else None


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
