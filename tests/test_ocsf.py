"""backend.audit.ocsf.ocsf_event: each audit row as an OCSF event of its class, checked against
the official OCSF schema (tests/ocsf_schema.py), with actor, target, outcome and the row's
identity where the docs (docs/api.md, "OCSF") say they go."""

import json

import pytest

from backend.audit import ocsf
from backend.audit.ocsf import OCSF_VERSION, ocsf_event
from tests.ocsf_schema import activity_caption, class_caption, problems

HASH = "ab" * 32
PREVIOUS = "cd" * 32


def audit_row(event: str, source: str = "v1", **fields) -> dict:
    """An export row with every field of the structured record, as #17 writes them."""
    return {
        "id": 42,
        "created_at": "2026-11-21T10:00:00.123456Z",
        "source": source,
        "event": event,
        "level": "INFO",
        "user": "admin",
        "ip": "203.0.113.9",
        "track": f"{event} happened",
        "method": "POST",
        "path": "/v1/users",
        "status": 200,
        "request_id": "7f3c" * 8,
        "user_agent": "curl/8.5.0",
        "actor_id": 1,
        "token_id": 7,
        "target_type": None,
        "target_id": None,
        "target": None,
        "outcome": "success",
        "details": {},
        "event_id": "0b7c5a4e-8d1f-4c2b-9a37-5e2f1d6c8b90",
        "chain_version": 2,
        "prev_hash": PREVIOUS,
        "hash": HASH,
        **fields,
    }


BOB = {"target_type": "user", "target_id": "3", "target": "bob"}
CLI = {
    "ip": None,
    "method": None,
    "path": None,
    "status": None,
    "request_id": None,
    "user_agent": None,
    "user": None,
    "actor_id": None,
    "token_id": None,
    "details": {"os_user": "root", "host": "audit-01"},
}
SYSTEM = {**CLI, "target_type": "trail", "details": {}}
SERVICE = {**CLI, "target_type": "service", "target_id": "4242", "details": {"pid": 4242}}
# One row of every event the service writes, and the (class, activity) it becomes.
EXAMPLES = {
    "login.success": (audit_row("login.success", "auth", path="/login", token_id=None), 3002, 1),
    "login.failure": (
        audit_row(
            "login.failure",
            "auth",
            level="WARNING",
            status=401,
            outcome="failure",
            user="mallory",
            actor_id=None,
            token_id=None,
            details={"reason": "unknown_user"},
        ),
        3002,
        1,
    ),
    "login.locked": (
        audit_row("login.locked", "auth", level="WARNING", status=429, outcome="denied"),
        3002,
        1,
    ),
    "logout": (
        audit_row(
            "logout", "auth", method="GET", path="/logout", target_type="token", target_id="7"
        ),
        3002,
        2,
    ),
    "user.create": (
        audit_row(
            "user.create", status=201, details={"changes": {"username": [None, "bob"]}}, **BOB
        ),
        3001,
        1,
    ),
    "user.disable": (audit_row("user.disable", method="PATCH", **BOB), 3001, 5),
    "user.enable": (audit_row("user.enable", method="PATCH", **BOB), 3001, 2),
    "password.change": (
        audit_row("password.change", method="PUT", **BOB, user="bob", actor_id=3),
        3001,
        3,
    ),
    "password.change.failure": (
        audit_row("password.change.failure", level="WARNING", status=403, outcome="failure"),
        3001,
        3,
    ),
    "token.revoke": (
        audit_row("token.revoke", details={"changes": {"tokens": [2, 0]}}, **BOB),
        3001,
        99,
    ),
    "api.request": (audit_row("api.request", method="GET", path="/v1/me"), 6003, 2),
    "api.request POST": (audit_row("api.request", path="/v1/users", status=201), 6003, 1),
    "api.request 401": (
        audit_row(
            "api.request",
            method="GET",
            path="/v1/me",
            level="WARNING",
            status=401,
            outcome="denied",
            user=None,
            actor_id=None,
            token_id=None,
        ),
        6003,
        2,
    ),
    "index.view": (audit_row("index.view", "main", level="DEBUG", method="GET", path="/"), 6001, 2),
    "audit.view": (audit_row("audit.view", "main", method="GET", path="/audit"), 6001, 2),
    "api.request, a read of the trail": (
        audit_row(
            "api.request",
            method="GET",
            path="/v1/logs",
            target_type="trail",
            details={"filters": {"user": "bob"}},
        ),
        6003,
        2,
    ),
    "trail.export": (
        audit_row(
            "trail.export",
            method="GET",
            path="/v1/logs/export",
            target_type="trail",
            target=None,
            details={"filters": {}, "rows": 12},
        ),
        6001,
        7,
    ),
    "trail.purge": (audit_row("trail.purge", "cli", level="WARNING", **CLI), 1008, 2),
    "hold.add": (audit_row("hold.add", "cli", level="WARNING", **CLI), 1008, 99),
    "hold.release": (audit_row("hold.release", "cli", level="WARNING", **CLI), 1008, 99),
    "service.start": (audit_row("service.start", "system", **SERVICE), 6002, 3),
    "service.stop": (audit_row("service.stop", "system", **SERVICE), 6002, 4),
    "audit.spooling": (audit_row("audit.spooling", "system", level="ERROR", **SYSTEM), 1008, 99),
    "audit.replayed": (
        audit_row(
            "audit.replayed", "system", level="WARNING", **{**SYSTEM, "details": {"rows": 3}}
        ),
        1008,
        99,
    ),
    "audit.rejected": (
        audit_row(
            "audit.rejected", "app", level="ERROR", outcome="error", **{**SYSTEM, "details": {}}
        ),
        1008,
        99,
    ),
    "request.exception": (
        audit_row("request.exception", "app", level="ERROR", status=500, outcome="error"),
        6008,
        1,
    ),
    "user.create, by a command": (audit_row("user.create", "cli", **{**CLI, **BOB}), 3001, 1),
    "trail.export, by a command": (
        audit_row("trail.export", "cli", **{**CLI, "target_type": "trail"}),
        6001,
        7,
    ),
    "cli.audit.verify": (audit_row("cli.audit.verify", "cli", **CLI), 6003, 2),
    "cli.audit.anchor": (audit_row("cli.audit.anchor", "cli", **CLI), 6003, 2),
    "cli.audit.hold.list": (audit_row("cli.audit.hold.list", "cli", **CLI), 6003, 2),
    "cli.audit.replay": (audit_row("cli.audit.replay", "cli", **CLI), 6003, 1),
    "cli.users.ensure-admin": (audit_row("cli.users.ensure-admin", "cli", **CLI), 6003, 2),
    "cli.users.create": (audit_row("cli.users.create", "cli", **CLI), 6003, 1),
    "cli.audit.purge": (audit_row("cli.audit.purge", "cli", **CLI), 6003, 4),
}


def event_of(name: str) -> dict:
    return ocsf_event(EXAMPLES[name][0])


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_event_becomes_its_class_and_activity(name):
    row, class_uid, activity_id = EXAMPLES[name]
    event = ocsf_event(row)
    assert (event["class_uid"], event["activity_id"]) == (class_uid, activity_id)
    assert event["type_uid"] == class_uid * 100 + activity_id


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_event_validates_against_the_ocsf_schema_of_its_class(name):
    assert problems(event_of(name)) == []


def test_an_event_of_every_class_the_mapping_can_emit_is_validated():
    emitted = {activity.ocsf_class.uid for activity in ocsf.EVENTS.values()}
    emitted |= {activity.ocsf_class.uid for _, activity in ocsf.PREFIXES}
    emitted |= {activity.ocsf_class.uid for activity in ocsf.SOURCES.values()}
    emitted.add(ocsf.API_ACTIVITY.uid)
    assert emitted == {class_uid for _, class_uid, _ in EXAMPLES.values()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_class_category_and_activity_names_are_the_schema_captions(name):
    event = event_of(name)
    caption, category_uid, category = class_caption(event["class_uid"])
    assert (event["class_name"], event["category_uid"], event["category_name"]) == (
        caption,
        category_uid,
        category,
    )
    if event["activity_id"] != 99:  # Other: the name says which other act it was
        assert event["activity_name"] == activity_caption(event["class_uid"], event["activity_id"])
    assert event["type_name"] == f"{caption}: {event['activity_name']}"


def test_a_page_view_reads_its_page_as_a_web_resource():
    assert event_of("audit.view")["web_resources"] == [{"type": "page", "name": "/audit"}]


def test_an_unknown_event_of_a_source_takes_that_sources_class():
    assert ocsf_event(audit_row("login.mfa", "auth"))["class_uid"] == 3002
    assert ocsf_event(audit_row("something.new", "app"))["class_uid"] == 6008
    assert ocsf_event(audit_row("something.new", "system"))["class_uid"] == 6002


def test_another_v1_act_is_api_activity_by_its_method():
    event = ocsf_event(audit_row("sink.pause", method="DELETE", path="/v1/sinks/siem"))
    assert (event["class_uid"], event["activity_id"]) == (6003, 4)
    assert event["api"]["operation"] == "DELETE /v1/sinks/siem"


def test_the_actor_is_the_signed_in_user_and_their_token():
    assert event_of("user.create")["actor"] == {
        "user": {"name": "admin", "uid": "1"},
        "session": {"uid": "7"},
    }


def test_an_anonymous_caller_is_an_unknown_user_where_the_class_needs_an_actor():
    assert event_of("api.request 401")["actor"] == {"user": ocsf.ANONYMOUS}


def test_a_command_is_acted_by_its_os_user_from_its_host():
    event = event_of("cli.audit.verify")
    assert event["actor"] == {"user": {"name": "root"}}
    assert event["src_endpoint"] == {"hostname": "audit-01"}
    assert event["api"]["operation"] == "audit verify"
    assert event_of("user.create, by a command")["actor"] == {"user": {"name": "root"}}


def test_the_target_user_is_the_user_of_an_account_change():
    assert event_of("user.disable")["user"] == {"name": "bob", "uid": "3"}


def test_the_user_of_a_login_is_who_tried():
    assert event_of("login.failure")["user"] == {"name": "mallory"}


def test_the_target_of_an_api_act_is_a_resource():
    row = audit_row("api.request", method="PATCH", path="/v1/users/3", **BOB)
    assert ocsf_event(row)["resources"] == [{"type": "user", "uid": "3", "name": "bob"}]


def test_a_target_with_no_place_in_its_class_stays_in_unmapped():
    row = audit_row("hold.add", "cli", **{**CLI, "target_type": "hold", "target": "case-7"})
    assert ocsf_event(row)["unmapped"]["target"] == {"type": "hold", "name": "case-7"}
    assert event_of("logout")["unmapped"]["target"] == {"type": "token", "uid": "7"}
    assert event_of("service.start")["unmapped"]["target"] == {"type": "service", "uid": "4242"}


def test_a_read_of_the_trail_names_the_trail_as_its_resource():
    event = event_of("api.request, a read of the trail")
    assert event["resources"] == [{"type": "trail", "name": "audit_log"}]
    assert event["unmapped"]["details"] == {"filters": {"user": "bob"}}
    assert event_of("trail.export")["web_resources"] == [{"type": "trail", "name": "audit_log"}]


@pytest.mark.parametrize(
    "outcome, status_id, status",
    [("success", 1, "Success"), ("failure", 2, "Failure"), ("denied", 2, "Failure")]
    + [("error", 2, "Failure")],
)
def test_the_outcome_is_the_status(outcome, status_id, status):
    event = ocsf_event(audit_row("api.request", outcome=outcome))
    assert (event["status_id"], event["status"]) == (status_id, status)
    assert event["unmapped"]["outcome"] == outcome


def test_a_failure_names_its_reason_as_the_status_detail():
    assert event_of("login.failure")["status_detail"] == "unknown_user"


def test_a_refusal_without_a_reason_says_denied_in_the_status_detail():
    assert event_of("api.request 401")["status_detail"] == "denied"


def test_a_row_without_an_outcome_has_an_unknown_status():
    row = audit_row("api.request")
    del row["outcome"]
    assert (ocsf_event(row)["status_id"], ocsf_event(row)["status"]) == (0, "Unknown")


@pytest.mark.parametrize(
    "level, severity_id",
    [("DEBUG", 1), ("INFO", 1), ("WARNING", 3), ("ERROR", 4), ("CRITICAL", 5)],
)
def test_the_level_is_the_severity_and_stays_the_log_level(level, severity_id):
    event = ocsf_event(audit_row("api.request", level=level))
    assert event["severity_id"] == severity_id
    assert event["metadata"]["log_level"] == level


def test_the_client_address_is_the_source_endpoint():
    assert event_of("login.success")["src_endpoint"] == {"ip": "203.0.113.9"}


def test_the_request_is_the_http_request_and_its_status_the_response():
    event = event_of("api.request")
    assert event["http_request"] == {
        "http_method": "GET",
        "url": {"path": "/v1/me"},
        "user_agent": "curl/8.5.0",
        "uid": "7f3c" * 8,
    }
    assert event["http_response"] == {"code": 200}
    assert event["status_code"] == "200"
    assert event["api"]["operation"] == "GET /v1/me"


def test_time_is_milliseconds_since_the_epoch_and_the_original_keeps_microseconds():
    event = event_of("api.request")
    assert event["time"] == 1795255200123
    assert event["metadata"]["original_time"] == "2026-11-21T10:00:00.123456Z"


def test_metadata_names_the_schema_the_product_and_the_rows_identity():
    metadata = event_of("api.request")["metadata"]
    assert metadata["version"] == OCSF_VERSION
    assert metadata["product"]["name"] == "flask-audit-trail"
    assert metadata["product"]["version"]
    assert metadata["uid"] == "0b7c5a4e-8d1f-4c2b-9a37-5e2f1d6c8b90"
    assert metadata["sequence"] == 42
    assert metadata["correlation_uid"] == "7f3c" * 8


def test_the_rows_id_and_chain_hashes_stay_in_unmapped():
    unmapped = event_of("api.request")["unmapped"]
    assert (unmapped["id"], unmapped["prev_hash"], unmapped["hash"]) == (42, PREVIOUS, HASH)
    assert unmapped["chain_version"] == 2
    assert (unmapped["source"], unmapped["event"]) == ("v1", "api.request")


def test_details_stay_whole_in_unmapped():
    assert event_of("user.create")["unmapped"]["details"] == {
        "changes": {"username": [None, "bob"]}
    }


def test_the_track_is_the_message():
    assert event_of("logout")["message"] == "logout happened"


def test_a_row_written_before_the_structured_record_still_validates():
    row = {
        name: value
        for name, value in audit_row("user.create", user="admin").items()
        if name not in ("actor_id", "token_id", "target_type", "target_id", "target", "details")
        and name != "outcome"
    }
    event = ocsf_event(row)
    assert problems(event) == []
    assert event["user"] == {"name": "admin"}


def test_a_method_ocsf_does_not_list_stays_in_unmapped():
    event = ocsf_event(audit_row("api.request", method="PROPFIND", status=405, outcome="failure"))
    assert problems(event) == []
    assert "http_method" not in event["http_request"]
    assert event["unmapped"]["method"] == "PROPFIND"


@pytest.mark.parametrize(
    "broken",
    [{"class_uid": 3001}, {"severity_id": None}, {"made_up": 1}, {"activity_id": 42}],
    ids=["another class's uid", "a null", "an unknown attribute", "an unknown activity"],
)
def test_the_schema_check_refuses_an_event_that_breaks_the_schema(broken):
    assert problems({**event_of("login.success"), **broken}) != []


def test_a_chunk_of_the_export_becomes_one_event_a_line_in_slices_of_rows():
    rows = [audit_row("api.request", id=number) for number in range(1, ocsf.SLICE_ROWS * 2 + 2)]
    chunk = "".join(json.dumps(row) + "\n" for row in rows).encode()
    pieces = list(ocsf.ndjson_events(chunk))
    assert [piece.count(b"\n") for piece in pieces] == [ocsf.SLICE_ROWS, ocsf.SLICE_ROWS, 1]
    events = [json.loads(line) for piece in pieces for line in piece.splitlines()]
    assert events == [ocsf_event(row) for row in rows]


def test_an_empty_chunk_stays_one_empty_piece():
    assert list(ocsf.ndjson_events(b"")) == [b""]
