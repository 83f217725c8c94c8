"""GET /v1/logs/export?format=ocsf and `flask audit export --format ocsf`: real rows of the
trail as OCSF events, each valid against the OCSF schema of its class (tests/ocsf_schema.py)."""

import json

import pytest

from tests.conftest import basic
from tests.ocsf_schema import problems


@pytest.fixture
def trail(api, users):
    """Rows of several classes, written by real requests: logins (one failed), a user created,
    API reads (one refused), a page view."""
    api.client.post("/login", headers=basic("alice", "not-her-password"))
    api.post(
        "/v1/users",
        users["admin"],
        json={"username": "carol", "password": "a long enough passphrase"},
    )
    api.get("/v1/me", users["alice"], environ_base={"REMOTE_ADDR": "203.0.113.9"})
    api.get("/v1/me", "not-a-token")
    api.client.get("/")
    return users


def ocsf_export(api, token, **params):
    response = api.get("/v1/logs/export", token, query_string={"format": "ocsf", **params})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def events(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def ndjson_rows(api, token, **params) -> list[dict]:
    response = api.get("/v1/logs/export", token, query_string={"format": "ndjson", **params})
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_every_event_of_the_export_validates_against_its_class(api, trail):
    exported = events(ocsf_export(api, trail["admin"]))
    assert {event["class_uid"] for event in exported} >= {3002, 3001, 6003, 6001}
    assert {json.dumps(event): problems(event) for event in exported} == {
        json.dumps(event): [] for event in exported
    }


def rows_before_own_request(api, token) -> list[dict]:
    """The rows an export made just before could see: every row the caller may see now but the
    last, the `api.request` row of that export, written once it had answered."""
    rows = ndjson_rows(api, token)
    assert (rows[-1]["event"], rows[-1]["path"]) == ("api.request", "/v1/logs/export")
    return rows[:-1]


def test_each_event_carries_its_rows_id_event_id_and_hash(api, trail):
    exported = events(ocsf_export(api, trail["admin"]))
    rows = rows_before_own_request(api, trail["admin"])
    assert [
        (e["metadata"]["sequence"], e["metadata"]["uid"], e["unmapped"]["hash"]) for e in exported
    ] == [(row["id"], row["event_id"], row["hash"]) for row in rows]
    assert [e["unmapped"]["prev_hash"] for e in exported] == [row["prev_hash"] for row in rows]


def test_a_failed_login_is_an_authentication_failure_of_who_tried(api, trail):
    [event] = events(ocsf_export(api, trail["admin"], event="login.failure"))
    assert (event["class_uid"], event["activity_id"]) == (3002, 1)
    assert event["user"]["name"] == "alice"
    assert event["src_endpoint"]["ip"]


def test_an_api_request_is_api_activity_with_its_request(api, trail):
    exported = events(ocsf_export(api, trail["admin"], event="api.request", ip="203.0.113.9"))
    assert [(e["class_uid"], e["api"]["operation"]) for e in exported] == [(6003, "GET /v1/me")]
    assert exported[0]["actor"]["user"]["name"] == "alice"
    assert exported[0]["src_endpoint"] == {"ip": "203.0.113.9"}
    assert exported[0]["http_request"]["http_method"] == "GET"


def test_a_created_user_is_an_account_change(api, trail):
    [event] = events(ocsf_export(api, trail["admin"], event="user.create"))
    assert (event["class_uid"], event["activity_id"]) == (3001, 1)
    assert event["actor"]["user"]["name"] == "admin"


def test_the_filters_and_the_visibility_rule_are_the_exports(api, trail):
    mine = events(ocsf_export(api, trail["alice"]))
    rows = rows_before_own_request(api, trail["alice"])
    assert {row["user"] for row in rows} == {"alice"}
    assert [event["unmapped"]["id"] for event in mine] == [row["id"] for row in rows]


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
    checked = [(event["unmapped"]["event"], problems(event)) for event in events_of(result.stdout)]
    assert checked == [("login.success", [])] * 3 + [("login.failure", [])]


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]
