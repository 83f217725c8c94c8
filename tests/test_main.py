"""GET /, /healthz, /readyz, and the OpenAPI document at /v1/openapi.json."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import pytest
import sqlalchemy as sa

from backend import create_app, dispose_engines
from backend.roles import owner_engine
from tests.conftest import make_settings
from tests.helpers import assert_error, latest_migration, schema_version

DOCUMENTED_PATHS = {
    "/login",
    "/logout",
    "/v1/me",
    "/v1/users",
    "/v1/logs",
    "/v1/logs/{log_id}",
    "/v1/logs/stats",
}
# The browser viewer, the API reference and their files are pages for people, not part of the
# API's document.
BROWSER_ENDPOINTS = {
    "static",
    "main.static",
    "main.audit_page",
    "main.docs_page",
    "main.docs_asset",
}


@contextmanager
def schema_version_set_to(app, revision: str) -> Iterator[None]:
    """Pretend the schema is at `revision`, with raw SQL as the tables' owner; restore the real
    version after."""
    [real] = schema_version(app)

    def set_version(value: str) -> None:
        with app.app_context(), owner_engine().begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": value})

    set_version(revision)
    try:
        yield
    finally:
        set_version(real)


@pytest.fixture
def sqlite_app_at(tmp_path):
    """Builds apps on SQLite files that are not a migrated database (no migration is run)."""
    apps = []

    def make(path):
        apps.append(create_app(make_settings(f"sqlite:///{path}", tmp_path)))
        return apps[-1]

    yield make
    for app in apps:
        dispose_engines(app)


@pytest.fixture
def openapi(client) -> dict:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_index_names_the_service_and_its_version(client):
    body = client.get("/").get_json()
    assert (body["service"], body["version"]) == ("flask-audit-trail", version("flask-audit-trail"))


def test_index_links_to_the_api(client):
    links = client.get("/").get_json()["links"]
    assert links["openapi"] == "http://localhost/v1/openapi.json"
    assert links["login"] == "http://localhost/login"
    assert links["me"] == "http://localhost/v1/me"
    assert links["logs"] == "http://localhost/v1/logs"


def test_healthz_is_200(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_healthz_writes_no_audit_row(api, client):
    client.get("/healthz")
    assert api.rows() == []


def test_healthz_is_200_without_a_database(sqlite_app_at, tmp_path):
    app = sqlite_app_at(tmp_path / "no-such-directory" / "audit.db")
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_is_200_at_the_latest_migration(app, client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "migration": latest_migration(),
        "spooled_events": 0,
        "reads": "primary",
        "standby": "not configured",
    }
    assert schema_version(app) == [latest_migration()]


def test_readyz_is_503_when_the_schema_is_at_another_migration(app, client):
    with schema_version_set_to(app, "0000_older"):
        response = client.get("/readyz")
    error = assert_error(response, 503)
    assert "flask db upgrade" in error["message"]


def test_readyz_is_503_on_a_database_without_tables(sqlite_app_at, tmp_path):
    app = sqlite_app_at(tmp_path / "empty.db")
    assert_error(app.test_client().get("/readyz"), 503)


def test_readyz_is_503_when_the_database_does_not_answer(sqlite_app_at, tmp_path):
    app = sqlite_app_at(tmp_path / "no-such-directory" / "audit.db")
    assert_error(app.test_client().get("/readyz"), 503)


def test_openapi_is_public(client):
    assert client.get("/v1/openapi.json").status_code == 200


def test_openapi_is_version_3(openapi):
    assert openapi["openapi"].startswith("3.")


def served_api_paths(app) -> set[str]:
    """Every path of the API the app routes, in OpenAPI spelling (`<int:log_id>` as `{log_id}`)."""
    return {
        re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in BROWSER_ENDPOINTS
    }


def test_openapi_documents_every_route(app, openapi):
    assert DOCUMENTED_PATHS <= served_api_paths(app)
    assert set(openapi["paths"]) == served_api_paths(app)


def test_openapi_has_a_bearer_security_scheme(openapi):
    schemes = openapi["components"]["securitySchemes"].values()
    assert {"type": "http", "scheme": "bearer"} in [
        {"type": s.get("type"), "scheme": s.get("scheme")} for s in schemes
    ]


def test_openapi_says_v1_routes_need_the_bearer_token(openapi):
    bearer_names = {
        name
        for name, scheme in openapi["components"]["securitySchemes"].items()
        if scheme.get("scheme") == "bearer"
    }
    public = ("/v1/openapi.json", "/v1/logs/keys")  # CONTRACT.md: anyone may check the trail
    protected = [
        path for path in openapi["paths"] if path.startswith("/v1/") and path not in public
    ] + ["/logout"]
    assert len(protected) >= len(DOCUMENTED_PATHS - {"/login"})
    for path in protected:
        for operation in openapi["paths"][path].values():
            assert bearer_names & {name for need in operation["security"] for name in need}


def query_parameter(openapi, path: str, name: str) -> dict:
    [parameter] = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name]
    return parameter["schema"]


def test_openapi_says_ip_is_an_ipv4_or_ipv6_address(openapi):
    assert query_parameter(openapi, "/v1/logs", "ip")["anyOf"] == [
        {"format": "ipv4"},
        {"format": "ipv6"},
    ]


def test_openapi_says_text_filters_hold_no_nul(openapi):
    for name in ("user", "event", "q"):
        assert query_parameter(openapi, "/v1/logs", name)["pattern"] == "^[^\\u0000]*$"


def test_openapi_patterns_are_ecma_regular_expressions(openapi):
    # JSON Schema patterns have no \\Z (Python's end of text); `$` is the very end there.
    username = openapi["components"]["schemas"]["NewUser"]["properties"]["username"]
    assert username["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


def test_openapi_login_takes_http_basic_or_a_body_of_both_fields(openapi):
    login = openapi["paths"]["/login"]["post"]
    assert login["security"] == [{"basic_auth": []}, {}]
    assert login["requestBody"]["required"] is False
    assert openapi["components"]["schemas"]["Login"]["anyOf"] == [
        {"required": ["username", "password"]},
        {"maxProperties": 0},
    ]
