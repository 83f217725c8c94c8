"""An audit event, the parts of the request every event carries, and the rules its structured
fields follow (`outcome` from a status, `details` made safe to keep)."""

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

    `details` is made safe to keep (`safe_details`: no secret, JSON's own types), and a row
    without an `outcome` gets the one its status says. NUL (which PostgreSQL text cannot
    hold) and lone surrogates (which no UTF-8 encoder takes, e.g. from JSON's "\\ud800") are
    stored as U+FFFD on every database, and a string is cut to its column's length
    (COLUMN_LENGTHS): an event the database refuses would have to be set aside (writer.py),
    where it is read by a person, not queried.
    """
    row = {}
    for name in FIELDS:  # not dataclasses.asdict: its deep copies cost more than the rest
        value = getattr(self, name)
        if isinstance(value, str):
            value = storable(value)[: COLUMN_LENGTHS.get(name)]
        row[name] = value
    if row["outcome"] is None:  # every new row says one: what its status or level tells
        row["outcome"] = outcome_for_status(row["status"], row["level"])
    row["details"] = safe_details(row["details"]) if row["details"] else {}
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


def request_fields() -> tuple[dict, str]:
    """Client address (after ProxyFix), method, path, request id, user agent and `caller` (the
    holder of a live bearer token, for the actor's and token's ids); and what the track should
    add about them: a client address that is not an IP address, quoted."""
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
        "caller": g.get("caller"),
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


REDACTED = "[redacted]"
# A key of `details` (at any depth) whose value is never kept: a secret, whatever the caller
# passed. `changes` of such a field keep both sides as REDACTED.
SECRET_KEY = re.compile(r"password|passwd|secret|token|authorization|api_?key", re.IGNORECASE)
# Keys that name a token without holding one: its id, and counts of tokens.
NOT_SECRET = frozenset({"token_id", "revoked_tokens", "live_tokens"})
DETAIL_TEXT_MAX = 1000  # characters of one string in `details`
DETAIL_ITEMS_MAX = 100  # entries of one list or object in `details`


def safe_details(details: dict) -> dict:
    """`details` as a row keeps it: secrets as "[redacted]" (SECRET_KEY), strings storable and
    at most DETAIL_TEXT_MAX characters, at most DETAIL_ITEMS_MAX entries a level, and only
    JSON's own types (anything else as its text), so its hash survives the database."""
    return _safe(details, None)


def _safe(value, key: str | None):
    if key is not None and key not in NOT_SECRET and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        items = list(value.items())[:DETAIL_ITEMS_MAX]
        if key == "changes":  # {"field": [old, new]}: a secret field's both sides redacted
            return {
                str(name): [REDACTED, REDACTED]
                if SECRET_KEY.search(str(name)) and str(name) not in NOT_SECRET
                else _safe(pair, None)
                for name, pair in items
            }
        return {str(name): _safe(item, str(name)) for name, item in items}
    if isinstance(value, list | tuple):
        return [_safe(item, None) for item in value[:DETAIL_ITEMS_MAX]]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    text = value if isinstance(value, str) else str(value)
    return storable(text)[:DETAIL_TEXT_MAX]


def outcome_for_status(status: int | None, level: str) -> str:
    """The outcome an HTTP status says (CONTRACT.md): 401, 403 and 429 are `denied` (a control
    refused), other 4xx `failure`, 5xx `error`; no status is `success` unless the level says
    ERROR or worse. An act that knows better (a wrong password's 401 is a `failure`) says so."""
    if status is None:
        return "error" if level in ("ERROR", "CRITICAL") else "success"
    if status >= 500:
        return "error"
    if status in (401, 403, 429):
        return "denied"
    return "failure" if status >= 400 else "success"


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
