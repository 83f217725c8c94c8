"""GET /v1/logs/export?format=ocsf and `flask audit export --format ocsf`: real rows of the
trail as OCSF events, each valid against the OCSF schema of its class (tests/ocsf_schema.py)."""

import json
import urllib.request

import pytest

from backend.audit.subscribers import record_service
from tests.conftest import ADMIN, basic, bearer
from tests.helpers import add_crashing_route
from tests.ocsf_schema import problems
from tests.serving import ADMIN as SERVED_ADMIN


@pytest.fixture
def trail(api, users, runner):
    """Rows of every class that requests and commands write: logins (one failed), a user
    created, one disabled (and their tokens revoked), API reads (one refused, one of the
    trail), a page view, an export, and commands that place and release a legal hold."""
    api.client.post("/login", headers=basic("alice", "not-her-password"))
    created = api.post(
        "/v1/users",
        users["admin"],
        json={"username": "carol", "password": "a long enough passphrase"},
    )
    bob = next(
        u["id"]
        for u in api.get("/v1/users", users["admin"]).get_json()["items"]
        if u["username"] == "bob"
    )
    api.client.patch(f"/v1/users/{bob}", headers=bearer(users["admin"]), json={"disabled": True})
    assert created.status_code == 201
    api.get("/v1/me", users["alice"], environ_base={"REMOTE_ADDR": "203.0.113.9"})
    api.get("/v1/me", "not-a-token")
    api.get("/v1/logs", users["admin"], query_string={"user": "alice"})
    export = api.get("/v1/logs/export", users["admin"], query_string={"event": "logout"})
    export.get_data()
    export.close()  # the end of the stream: its `trail.export` row
    api.client.get("/")
    assert (
        runner.invoke(args=["audit", "hold", "add", "case-7", "--reason", "a ticket"]).exit_code
        == 0
    )
    assert runner.invoke(args=["audit", "hold", "release", "case-7"]).exit_code == 0
    return users


def ocsf_export(api, token, **params):
    response = api.get("/v1/logs/export", token, query_string={"format": "ocsf", **params})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def events_of(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def events(response) -> list[dict]:
    return events_of(response.get_data())


def one_event(api, token, **params) -> dict:
    [event] = events(ocsf_export(api, token, **params))
    assert problems(event) == []
    return event


def rows_seen_by(api, token, export) -> list[dict]:
    """The rows that `export`, made just before, could see: those the caller may see now but
    the rows of that export's own request (written once it had answered)."""
    response = api.get("/v1/logs/export", token)
    own = export.headers["X-Request-ID"]
    rows = [json.loads(line) for line in response.get_data().splitlines()]
    return [row for row in rows if row["request_id"] != own]


def test_every_event_of_the_export_validates_against_its_class(api, trail):
    exported = events(ocsf_export(api, trail["admin"]))
    assert {event["class_uid"] for event in exported} == {3002, 3001, 6003, 6001, 1008}
    invalid = {e["unmapped"]["event"]: problems(e) for e in exported if problems(e)}
    assert invalid == {}


def test_each_event_carries_its_rows_id_event_id_and_hash(api, trail):
    export = ocsf_export(api, trail["admin"])
    rows = rows_seen_by(api, trail["admin"], export)
    assert [
        (e["metadata"]["sequence"], e["metadata"]["uid"], e["unmapped"]["hash"])
        for e in events(export)
    ] == [(row["id"], row["event_id"], row["hash"]) for row in rows]
    assert [e["unmapped"]["prev_hash"] for e in events(export)] == [r["prev_hash"] for r in rows]


def test_a_failed_login_is_an_authentication_failure_of_who_tried_and_why(api, trail):
    event = one_event(api, trail["admin"], event="login.failure")
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (3002, 1, 2)
    assert (event["user"]["name"], event["status_detail"]) == ("alice", "invalid_password")
    assert event["src_endpoint"]["ip"]


def test_an_api_request_is_api_activity_by_its_actor_from_their_address(api, trail):
    event = one_event(api, trail["admin"], event="api.request", ip="203.0.113.9")
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (6003, 2, 1)
    assert event["api"]["operation"] == "GET /v1/me"
    assert event["actor"]["user"]["name"] == "alice"
    assert event["actor"]["session"]["uid"]  # the id of alice's token
    assert event["src_endpoint"] == {"ip": "203.0.113.9"}


def test_a_refused_request_is_a_failure_of_an_anonymous_caller(api, trail):
    event = one_event(api, trail["admin"], event="api.request", outcome="denied")
    assert (event["status_id"], event["status_code"]) == (2, "401")
    assert event["actor"]["user"]["type_id"] == 0


def test_a_created_user_is_an_account_change_of_that_user_with_its_changes(api, trail):
    event = one_event(api, trail["admin"], event="user.create")
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (3001, 1, 1)
    assert (event["actor"]["user"]["name"], event["user"]["name"]) == ("admin", "carol")
    assert event["unmapped"]["details"]["changes"]["username"] == [None, "carol"]


def test_a_disabled_user_and_their_revoked_tokens_are_account_changes(api, trail):
    disabled = one_event(api, trail["admin"], event="user.disable")
    revoked = one_event(api, trail["admin"], event="token.revoke")
    assert (disabled["class_uid"], disabled["activity_id"], disabled["user"]["name"]) == (
        3001,
        5,
        "bob",
    )
    assert (revoked["class_uid"], revoked["activity_id"], revoked["user"]["name"]) == (
        3001,
        99,
        "bob",
    )


def test_a_read_of_the_trail_names_the_trail_and_its_filters(api, trail):
    reads = events(ocsf_export(api, trail["admin"], event="api.request", target_type="trail"))
    [event] = [e for e in reads if e["api"]["operation"] == "GET /v1/logs"]
    assert problems(event) == []
    assert event["resources"] == [{"type": "trail", "name": "audit_log"}]
    assert event["unmapped"]["details"]["filters"]["user"] == "alice"


def test_an_export_of_the_trail_is_a_web_resources_export_of_its_rows(api, trail):
    event = one_event(api, trail["admin"], event="trail.export")
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (6001, 7, 1)
    assert event["web_resources"] == [{"type": "trail", "name": "audit_log"}]
    assert event["unmapped"]["details"]["rows"] == 0


def test_a_legal_hold_is_an_event_log_activity_of_the_os_user_on_their_host(api, trail):
    exported = events(ocsf_export(api, trail["admin"], source="cli"))
    holds = [e for e in exported if e["unmapped"]["event"] in ("hold.add", "hold.release")]
    assert [(e["class_uid"], e["activity_name"]) for e in holds] == [
        (1008, "Place Legal Hold"),
        (1008, "Release Legal Hold"),
    ]
    assert all(e["actor"]["user"]["name"] and e["src_endpoint"]["hostname"] for e in holds)
    assert holds[0]["unmapped"]["target"] == {"type": "hold", "name": "case-7"}


def test_the_filters_and_the_visibility_rule_are_the_exports(api, trail):
    export = ocsf_export(api, trail["alice"])
    rows = rows_seen_by(api, trail["alice"], export)
    assert rows and {row["user"] for row in rows} == {"alice"}
    assert [event["unmapped"]["id"] for event in events(export)] == [row["id"] for row in rows]


def test_an_export_that_matches_nothing_is_an_empty_200(api, trail):
    assert ocsf_export(api, trail["admin"], event="no.such.event").get_data() == b""


def test_the_response_is_ndjson_offered_as_an_ocsf_file(api, trail):
    response = ocsf_export(api, trail["admin"])
    assert response.content_type == "application/x-ndjson"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit-log.ocsf.ndjson"'


def test_the_openapi_document_offers_the_format(api):
    document = api.client.get("/v1/openapi.json").get_json()
    parameters = document["paths"]["/v1/logs/export"]["get"]["parameters"]
    [fmt] = [parameter for parameter in parameters if parameter["name"] == "format"]
    assert "ocsf" in fmt["schema"]["enum"]


def test_the_command_writes_the_bytes_the_api_gives_an_admin(api, trail, runner):
    result = runner.invoke(args=["audit", "export", "--format=ocsf", "--source=auth"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == ocsf_export(api, trail["admin"], source="auth").get_data()
    checked = [(e["unmapped"]["event"], problems(e)) for e in events_of(result.stdout_bytes)]
    assert checked == [("login.success", [])] * 3 + [("login.failure", [])]


def test_the_commands_own_export_row_is_a_web_resources_export(api, trail, runner):
    assert runner.invoke(args=["audit", "export", "--format=ocsf"]).exit_code == 0
    event = one_event(api, trail["admin"], event="trail.export", source="cli")
    assert (event["class_uid"], event["activity_id"]) == (6001, 7)
    assert event["unmapped"]["details"]["format"] == "ocsf"


def test_an_unhandled_exception_is_an_application_error(app, api):
    token = add_crashing_route(app, api)
    assert api.get("/v1/boom", token).status_code == 500
    api.create_user(*ADMIN, is_admin=True)
    event = one_event(api, api.issue_token(ADMIN[0]), event="request.exception")
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (6008, 1, 2)


def test_a_worker_that_starts_is_an_application_lifecycle_start(app, api):
    record_service(app, "service.start", "worker 4242 serving")  # as gunicorn's post_fork hook
    api.create_user(*ADMIN, is_admin=True)
    event = one_event(api, api.issue_token(ADMIN[0]), event="service.start")
    assert (event["class_uid"], event["activity_id"], event["app"]["name"]) == (
        6002,
        3,
        "flask-audit-trail",
    )


@pytest.mark.serving
def test_a_served_worker_starts_on_the_record_of_the_ocsf_export(served):
    client, _ = served
    token = client.post("/login", basic=SERVED_ADMIN).body["token"]
    request = urllib.request.Request(
        f"{client.base_url}/v1/logs/export?format=ocsf&event=service.start",
        headers=bearer(token),
    )
    with client.opener.open(request, timeout=30) as response:
        started = events_of(response.read())
    assert started  # a row a worker that has begun serving
    assert {(e["class_uid"], e["activity_id"]) for e in started} == {(6002, 3)}
    assert [problems(event) for event in started] == [[]] * len(started)
