"""An audit row as an OCSF event (Open Cybersecurity Schema Framework, version OCSF_VERSION).

`ocsf_event` is pure: one export row (the dict that export.py writes as an NDJSON line) in, one
OCSF event out, so a SIEM that speaks OCSF takes the trail without a mapping of its own. Each
event gets the class nearest to what happened (`classify`: the event's name, then its source),
the acting user, what was acted on, the outcome, the client's address and request, and the
row's identity: `metadata.uid` is its `event_id`, `metadata.sequence` its `id`, and
`unmapped` keeps `id`, `event`, `source`, `outcome`, `chain_version`, `prev_hash` and `hash`
(and `details`, and the target where the class has no place for one), so a receiver still
sees the chain's links. OCSF has no null: an absent value is an absent key. docs/api.md has
the table of classes.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The newest the maintained validator ships (tests/ocsf_schema.py); 1.6 added PATCH to
# http_method, which /v1/users/<id> answers.
OCSF_VERSION = "1.8.0"
# OCSF's HTTP methods; another (a client may send any) stays in `unmapped.method`.
HTTP_METHODS = frozenset(
    ("OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT", "PATCH")
)
PRODUCT_NAME = "flask-audit-trail"
# The audit table: the log every event comes from (`metadata.log_name`, Event Log Activity).
LOG_NAME = "audit_log"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rows converted between two pauses of the export (backend.concurrency.pause).
SLICE_ROWS = 250
# Compact, UTF-8 as it is: the NDJSON export's own form (one encoder, made once).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# OCSF severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical.
SEVERITIES = {
    "DEBUG": (1, "Informational"),
    "INFO": (1, "Informational"),
    "WARNING": (3, "Medium"),
    "ERROR": (4, "High"),
    "CRITICAL": (5, "Critical"),
}
# OCSF status_id: 1 Success, 2 Failure (a refusal by a control and an error are failures too;
# `status_detail` says which, and `unmapped.outcome` keeps the row's own word).
STATUSES = {
    "success": (1, "Success"),
    "failure": (2, "Failure"),
    "denied": (2, "Failure"),
    "error": (2, "Failure"),
}
UNKNOWN = (0, "Unknown")
# Who acted when nobody signed in (a class that requires an actor or a user gets this one).
ANONYMOUS = {"name": "anonymous", "type_id": 0, "type": "Unknown"}


@dataclass(frozen=True)
class OcsfClass:
    """An OCSF event class, and which of the optional attributes this mapping fills in it."""

    uid: int
    name: str
    category_uid: int
    category_name: str
    # The optional attributes that it has and this mapping fills.
    attributes: frozenset[str]
    # Of those, the ones OCSF requires (filled with ANONYMOUS or an unknown endpoint if need be).
    requires: frozenset[str] = frozenset()


IAM = (3, "Identity & Access Management")
APPLICATION = (6, "Application Activity")
SYSTEM = (1, "System Activity")
_ENDPOINT_AND_REQUEST = frozenset({"actor", "src_endpoint", "http_request", "http_response"})

# The service logged in to (OCSF asks for it, or the destination's address).
AUTHENTICATION = OcsfClass(
    3002, "Authentication", *IAM, _ENDPOINT_AND_REQUEST | {"user", "service"}
)
ACCOUNT_CHANGE = OcsfClass(3001, "Account Change", *IAM, _ENDPOINT_AND_REQUEST | {"user"})
API_ACTIVITY = OcsfClass(
    6003,
    "API Activity",
    *APPLICATION,
    _ENDPOINT_AND_REQUEST | {"api", "resources"},
    requires=frozenset({"actor", "src_endpoint"}),
)
WEB_RESOURCES = OcsfClass(
    6001,
    "Web Resources Activity",
    *APPLICATION,
    frozenset({"src_endpoint", "http_request", "http_response", "web_resources"}),
)
APPLICATION_LIFECYCLE = OcsfClass(6002, "Application Lifecycle", *APPLICATION, frozenset({"app"}))
APPLICATION_ERROR = OcsfClass(6008, "Application Error", *APPLICATION, frozenset())
EVENT_LOG = OcsfClass(
    1008,
    "Event Log Activity",
    *SYSTEM,
    frozenset({"actor", "src_endpoint", "log_name", "log_provider"}),
)


@dataclass(frozen=True)
class Activity:
    """What an event is in OCSF: its class and its activity there (99 is the class's Other)."""

    ocsf_class: OcsfClass
    uid: int
    name: str


# By exact event name (CONTRACT.md, "What is audited" and the second release's additions).
EVENTS = {
    "logout": Activity(AUTHENTICATION, 2, "Logoff"),
    "user.create": Activity(ACCOUNT_CHANGE, 1, "Create"),
    "user.enable": Activity(ACCOUNT_CHANGE, 2, "Enable"),
    "user.disable": Activity(ACCOUNT_CHANGE, 5, "Disable"),
    "token.revoke": Activity(ACCOUNT_CHANGE, 99, "Revoke Tokens"),
    "trail.export": Activity(WEB_RESOURCES, 7, "Export"),
    "trail.purge": Activity(EVENT_LOG, 2, "Delete"),
    "hold.add": Activity(EVENT_LOG, 99, "Place Legal Hold"),
    "hold.release": Activity(EVENT_LOG, 99, "Release Legal Hold"),
    "service.start": Activity(APPLICATION_LIFECYCLE, 3, "Start"),
    "service.stop": Activity(APPLICATION_LIFECYCLE, 4, "Stop"),
    "audit.spooling": Activity(EVENT_LOG, 99, "Spool"),
    "audit.replayed": Activity(EVENT_LOG, 99, "Replay"),
    "audit.rejected": Activity(EVENT_LOG, 99, "Reject"),
    "request.exception": Activity(APPLICATION_ERROR, 1, "General Error"),
}
# By the start of the name, longest first: families whose members may grow.
PREFIXES = (
    ("password.change", Activity(ACCOUNT_CHANGE, 3, "Password Change")),
    ("login.", Activity(AUTHENTICATION, 1, "Logon")),
    ("logout", Activity(AUTHENTICATION, 2, "Logoff")),
    ("hold.", Activity(EVENT_LOG, 99, "Legal Hold")),
    ("service.", Activity(APPLICATION_LIFECYCLE, 99, "Other")),
    ("audit.", Activity(EVENT_LOG, 99, "Other")),
)
PAGE_VIEW = Activity(WEB_RESOURCES, 2, "Read")
# Anything else, by the row's source: a page view of the main blueprint reads a web resource.
SOURCES = {
    "auth": Activity(AUTHENTICATION, 99, "Other"),
    "main": PAGE_VIEW,
    "app": Activity(APPLICATION_ERROR, 99, "Other"),
    "system": Activity(APPLICATION_LIFECYCLE, 99, "Other"),
}
# API Activity's activities: by HTTP method for a request, by a command's last word for `cli.*`.
API_CREATE, API_READ, API_UPDATE, API_DELETE = (
    (1, "Create"),
    (2, "Read"),
    (3, "Update"),
    (4, "Delete"),
)
API_ACTIVITIES = {
    "POST": API_CREATE,
    "GET": API_READ,
    "HEAD": API_READ,
    "PUT": API_UPDATE,
    "PATCH": API_UPDATE,
    "DELETE": API_DELETE,
    "create": API_CREATE,
    "add": API_CREATE,
    "replay": API_CREATE,  # writes the spooled events into the trail
    "list": API_READ,
    "export": API_READ,
    "verify": API_READ,
    "tail": API_READ,
    "anchor": API_READ,
    "ensure-admin": API_READ,  # found an admin (one it creates is a `user.create` row)
    "set-password": API_UPDATE,
    "enable": API_UPDATE,
    "disable": API_UPDATE,
    "release": API_UPDATE,
    "upgrade": API_UPDATE,
    "purge": API_DELETE,
}


def classify(row: dict) -> Activity:
    """The OCSF class and activity of `row`: by its event's name, then its family, then its
    source; what is left (an `api.request`, a `cli.*` command, another /v1 act) is API
    Activity, its activity told by the HTTP method or the command's verb."""
    event = row["event"]
    if event in EVENTS:
        return EVENTS[event]
    if event.endswith(".view"):  # a page of the main blueprint (`index.view`, `audit.view`)
        return PAGE_VIEW
    for prefix, activity in PREFIXES:
        if event.startswith(prefix):
            return activity
    source = row.get("source")
    if source in SOURCES:
        return SOURCES[source]
    verb = event.rpartition(".")[2] if source == "cli" else row.get("method")
    return Activity(API_ACTIVITY, *API_ACTIVITIES.get(verb or "", (99, "Other")))


def ocsf_event(row: dict) -> dict:
    """`row`, an audit row as the export writes it, as one OCSF event of its class."""
    activity = classify(row)
    ocsf_class = activity.ocsf_class
    severity_id, severity = SEVERITIES.get(row["level"], UNKNOWN)
    status_id, status = STATUSES.get(row.get("outcome"), UNKNOWN)
    event = {
        "class_uid": ocsf_class.uid,
        "class_name": ocsf_class.name,
        "category_uid": ocsf_class.category_uid,
        "category_name": ocsf_class.category_name,
        "activity_id": activity.uid,
        "activity_name": activity.name,
        "type_uid": ocsf_class.uid * 100 + activity.uid,
        "type_name": f"{ocsf_class.name}: {activity.name}",
        "time": _milliseconds(row["created_at"]),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "status_code": _text(row.get("status")),
        "status_detail": _status_detail(row),
        "message": row["track"],
        "metadata": _metadata(row),
    }
    builders = {name: ATTRIBUTES[name] for name in ocsf_class.attributes}
    event |= {name: build(row, name in ocsf_class.requires) for name, build in builders.items()}
    event["unmapped"] = _unmapped(row, ocsf_class)
    return _present(**event)


def ndjson_events(chunk: bytes) -> Iterator[bytes]:
    """A chunk of the NDJSON export (whole lines) as the same rows' OCSF events, a line each,
    in pieces of SLICE_ROWS rows: the caller pauses between them, so that converting a chunk
    (Python's work, a row at a time) never holds a gevent worker's other requests for long."""
    lines = bytes(chunk).split(b"\n")[:-1]  # JSON escapes every LF inside a value
    if not lines:  # the export's first chunk (taken before the view answers) may be empty
        yield b""
    for start in range(0, len(lines), SLICE_ROWS):
        events = [ocsf_event(json.loads(line)) for line in lines[start : start + SLICE_ROWS]]
        yield "".join([_encode(event) + "\n" for event in events]).encode()


def _metadata(row: dict) -> dict:
    """Which schema, which product, and the row's identity: `uid` the event_id (the same across
    a replay from the spool), `sequence` the row's id (gapless, in the chain's order)."""
    return _present(
        version=OCSF_VERSION,
        product=_product(),
        uid=row.get("event_id"),
        sequence=row["id"],
        correlation_uid=row.get("request_id"),  # the other rows of the same request
        log_name=LOG_NAME,
        log_provider=PRODUCT_NAME,
        log_level=row["level"],
        original_time=row["created_at"],  # to the microsecond; `time` has milliseconds
    )


def _product() -> dict:
    """This service, as OCSF names a product."""
    return _present(name=PRODUCT_NAME, vendor_name=PRODUCT_NAME, version=_product_version())


def _unmapped(row: dict, ocsf_class: OcsfClass) -> dict:
    """The row's own words where OCSF has none: what the chain needs, and what no attribute of
    the class holds."""
    names = ("id", "source", "event", "outcome", "chain_version", "prev_hash", "hash")
    kept = {name: row.get(name) for name in names}
    if row.get("method") and row["method"] not in HTTP_METHODS:
        kept["method"] = row["method"]
    if row.get("details"):
        kept["details"] = row["details"]
    if not _target_placed(row, ocsf_class):
        kept["target"] = _target(row)
    return _present(**kept)


def _actor(row: dict, required: bool) -> dict | None:
    """Who acted: the signed-in user (or the OS account of a command), and the id of the token
    they used as the session."""
    name = row.get("user") or _details(row).get("os_user")
    user = _present(name=name, uid=_text(row.get("actor_id"))) if name else None
    if user is None and not required:
        return None
    return _present(
        user=user or ANONYMOUS,
        session={"uid": _text(row["token_id"])} if row.get("token_id") is not None else None,
    )


def _subject(row: dict, required: bool = True) -> dict:
    """The user an Authentication or Account Change event is about: the target user, else the
    one who acted (whose login or password it was)."""
    if row.get("target_type") == "user" and (row.get("target") or row.get("target_id")):
        return _present(name=row.get("target"), uid=_text(row.get("target_id")))
    if row.get("user"):
        return _present(name=row["user"], uid=_text(row.get("actor_id")))
    return dict(ANONYMOUS)


def _target(row: dict) -> dict | None:
    """What was acted on, as an OCSF resource (`type`, `uid`, `name`; the trail is named
    LOG_NAME); None without one."""
    name = row.get("target") or (LOG_NAME if row.get("target_type") == "trail" else None)
    if name is None and row.get("target_id") is None:
        return None
    return _present(type=row.get("target_type"), uid=row.get("target_id"), name=name)


def _target_placed(row: dict, ocsf_class: OcsfClass) -> bool:
    """The event's class has an attribute for the row's target: resources of any kind, or
    the user an Authentication or Account Change is about."""
    if ocsf_class.attributes & {"resources", "web_resources"}:
        return True
    return "user" in ocsf_class.attributes and row.get("target_type") == "user"


def _endpoint(row: dict, required: bool) -> dict | None:
    """Where the act came from: the client's address, or the host a command ran on."""
    endpoint = _present(ip=row.get("ip"), hostname=_details(row).get("host"))
    if not endpoint and required:
        return {"name": "unknown"}
    return endpoint or None


def _http_request(row: dict, required: bool = False) -> dict | None:
    request = _present(
        http_method=row.get("method") if row.get("method") in HTTP_METHODS else None,
        url={"path": row["path"]} if row.get("path") else None,
        user_agent=row.get("user_agent"),
        uid=row.get("request_id"),
    )
    return request or None


def _api(row: dict, required: bool = True) -> dict:
    """The operation: `METHOD /path` of a request, or the command of a `cli.*` row."""
    if row.get("source") == "cli" or not row.get("path"):
        operation = row["event"].removeprefix("cli.").replace(".", " ")
    else:
        operation = f"{row.get('method') or ''} {row['path']}".strip()
    return _present(
        operation=operation,
        service={"name": PRODUCT_NAME},
        request={"uid": row["request_id"]} if row.get("request_id") else None,
        response={"code": row["status"]} if row.get("status") is not None else None,
    )


def _status_detail(row: dict) -> str | None:
    """The machine-readable reason of a failure, else the outcome when it was not a success."""
    reason = _details(row).get("reason")
    if reason:
        return str(reason)
    outcome = row.get("outcome")
    return outcome if outcome not in (None, "success") else None


def _details(row: dict) -> dict:
    details = row.get("details")
    return details if isinstance(details, dict) else {}


def _milliseconds(created_at: str) -> int:
    """An RFC 3339 time as OCSF's timestamp: milliseconds since the epoch."""
    return (datetime.fromisoformat(created_at) - EPOCH) // timedelta(milliseconds=1)


def _text(value) -> str | None:
    return None if value is None else str(value)


def _present(**values) -> dict:
    """`values` without the absent ones: OCSF has no null."""
    return {name: value for name, value in values.items() if value is not None}


def _product_version() -> str:
    from backend.main.views import service_version  # installed metadata, read once

    return service_version()


def _http_response(row: dict, required: bool = False) -> dict | None:
    return {"code": row["status"]} if row.get("status") is not None else None


def _resources(row: dict, required: bool = False) -> list | None:
    return [_target(row)] if _target(row) else None


def _web_resources(row: dict, required: bool = True) -> list:
    """What was read or exported: the target, else the page of a page view, else the trail."""
    if _target(row):
        return [_target(row)]
    if row.get("source") == "main" and row.get("path"):
        return [{"type": "page", "name": row["path"]}]
    return [{"type": "trail", "name": LOG_NAME}]


# Each attribute a class may have (OcsfClass.attributes): its value for a row, given whether
# the class requires it.
ATTRIBUTES = {
    "actor": _actor,
    "src_endpoint": _endpoint,
    "http_request": _http_request,
    "http_response": _http_response,
    "user": _subject,
    "api": _api,
    "resources": _resources,
    "web_resources": _web_resources,
    "app": lambda row, required: _product(),
    "service": lambda row, required: {"name": PRODUCT_NAME},
    "log_name": lambda row, required: LOG_NAME,
    "log_provider": lambda row, required: PRODUCT_NAME,
}
