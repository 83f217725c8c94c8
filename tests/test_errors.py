"""Every error, from every blueprint and from routing, has the one JSON shape of CONTRACT.md.

`assert_error` and `add_crashing_route`, which the other test modules use too, are in
tests/helpers.py.
"""

import pytest
import sqlalchemy as sa

from backend.extensions import db
from tests.conftest import ALICE, basic
from tests.helpers import add_crashing_route, assert_error


def test_routing_404_under_v1_with_a_token(api, users):
    assert_error(api.get("/v1/no-such-thing", users["alice"]), 404)


def test_routing_404_at_top_level(client):
    assert_error(client.get("/no-such-thing"), 404)


def test_404_of_an_absent_row(api, users):
    assert_error(api.get("/v1/logs/999999", users["admin"]), 404)


def test_405_under_v1_lists_the_allowed_methods(api, users):
    response = api.post("/v1/me", users["alice"])
    assert_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_405_at_top_level_lists_the_allowed_methods(client):
    response = client.delete("/login")
    assert_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_401_on_v1_challenges_for_a_bearer_token(client):
    response = client.get("/v1/me")
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_401_with_a_bad_token_challenges_for_a_bearer_token(client):
    response = client.get("/v1/me", headers={"Authorization": "Bearer not-a-real-token"})
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_401_at_login_challenges_for_basic_credentials(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", headers=basic("alice", "not-her-password"))
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_403_has_the_error_shape(api, users):
    assert_error(api.get("/v1/users", users["alice"]), 403)


def test_400_of_a_bad_query_parameter_names_it(api, users):
    error = assert_error(api.get("/v1/logs?limit=0", users["alice"]), 400, details={"limit"})
    assert error["details"] == {"limit": ["must be between 1 and 1000"]}


def test_400_of_an_unknown_query_parameter_names_it(api, users):
    assert_error(api.get("/v1/logs?colour=red", users["alice"]), 400, details={"colour"})


def test_400_of_a_bad_body_field_names_it(api, users):
    response = api.post("/v1/users", users["admin"], json={"username": "carol"})
    assert_error(response, 400, details={"password"})


def test_409_has_the_error_shape(api, users):
    response = api.post(
        "/v1/users", users["admin"], json={"username": "alice", "password": "another-password-1"}
    )
    assert_error(response, 409)


def test_500_of_a_crash_has_the_error_shape(app, api):
    token = add_crashing_route(app, api)
    assert_error(api.get("/v1/boom", token), 500)


@pytest.mark.settings(DATABASE_POOL_SIZE="1")
def test_a_request_that_finds_no_connection_free_is_a_503_to_retry(app, api):
    """All of a worker's pooled connections in use (long exports, say) past the pool's
    timeout: the service is busy, not broken."""
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    with app.app_context():
        db.engine.pool._timeout = 0.2  # config.POOL_TIMEOUT is 10 s
        with db.engine.connect():  # the only one
            response = api.get("/v1/me", token=token)
        assert api.get("/v1/me", token=token).status_code == 200  # and once one is free
    assert_error(response, 503)
    assert response.headers["Retry-After"] == "1"
    [row] = api.rows(event="api.request", status=503)
    assert row.path == "/v1/me"


def test_a_database_error_that_is_no_lost_connection_stays_a_500_with_its_row(app, api):
    """Only a database that cannot be reached is a 503 to retry (tests/test_database_away.py);
    a statement the database refuses is a bug, recorded as one."""
    token = add_crashing_route(
        app, api, lambda: db.session.execute(sa.text("SELECT * FROM no_such_table"))
    )
    assert_error(api.get("/v1/boom", token), 500)
    [row] = api.rows(event="request.exception")
    assert "no_such_table" in row.track
