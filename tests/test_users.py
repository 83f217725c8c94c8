"""GET /v1/me, GET /v1/users and POST /v1/users."""

import re

import pytest

from tests.conftest import ALICE, bearer
from tests.helpers import assert_error, stored_users

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
CAROL = {"username": "carol", "password": "carol-password-1"}


def assert_user_object(body: dict, username: str, is_admin: bool) -> None:
    """`{"id", "username", "is_admin", "created_at"}` and nothing else (no password)."""
    assert set(body) == {"id", "username", "is_admin", "created_at"}
    assert isinstance(body["id"], int)
    assert (body["username"], body["is_admin"]) == (username, is_admin)
    assert RFC3339_UTC.match(body["created_at"])


def create(api, token: str, **fields):
    """POST /v1/users with CAROL's fields, overridden by `fields`."""
    return api.post("/v1/users", token, json={**CAROL, **fields})


def test_me_is_the_current_user(api, users):
    response = api.get("/v1/me", users["alice"])
    assert response.status_code == 200
    assert_user_object(response.get_json(), "alice", is_admin=False)


def test_me_of_an_admin_says_so(api, users):
    assert_user_object(api.get("/v1/me", users["admin"]).get_json(), "admin", is_admin=True)


def test_me_needs_a_token(api):
    assert_error(api.get("/v1/me"), 401)


def test_an_admin_lists_every_user_oldest_first(api, users):
    response = api.get("/v1/users", users["admin"])
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [user["username"] for user in items] == ["admin", "alice", "bob"]
    for user in items:
        assert_user_object(user, user["username"], is_admin=user["username"] == "admin")


def test_a_non_admin_may_not_list_users(api, users):
    assert_error(api.get("/v1/users", users["alice"]), 403)


def test_listing_users_needs_a_token(api, users):
    assert_error(api.get("/v1/users"), 401)


def test_an_admin_creates_a_user(app, api, users):
    response = create(api, users["admin"])
    assert response.status_code == 201
    assert_user_object(response.get_json(), "carol", is_admin=False)
    assert list(stored_users(app)) == ["admin", "alice", "bob", "carol"]


def test_an_admin_creates_an_admin(api, users):
    response = create(api, users["admin"], is_admin=True)
    assert response.status_code == 201
    assert_user_object(response.get_json(), "carol", is_admin=True)


def test_the_new_user_can_log_in(api, users):
    create(api, users["admin"])
    token = api.login(CAROL["username"], CAROL["password"])
    assert api.get("/v1/me", token).get_json()["username"] == "carol"


def test_the_password_is_not_in_the_response(api, users):
    response = create(api, users["admin"])
    assert CAROL["password"] not in response.get_data(as_text=True)
    assert "password" not in response.get_json()


def test_creating_a_user_leaves_a_row_naming_the_admin(api, users):
    create(api, users["admin"])
    [row] = api.rows(event="user.create")
    assert (row.source, row.level, row.user, row.status) == ("v1", "INFO", "admin", 201)
    assert "carol" in row.track and CAROL["password"] not in row.track


def test_a_non_admin_may_not_create_a_user(app, api, users):
    assert_error(create(api, users["alice"]), 403)
    assert "carol" not in stored_users(app)


def test_a_taken_username_is_409(api, users):
    assert_error(create(api, users["admin"], username="alice"), 409)


def test_a_taken_username_keeps_its_owner_and_password(app, api, users):
    create(api, users["admin"], username="alice", password="a-takeover-password", is_admin=True)
    assert stored_users(app) == {"admin": True, "alice": False, "bob": False}
    assert api.get("/v1/me", api.login(*ALICE)).status_code == 200


def test_a_missing_username_is_400_naming_it(api, users):
    response = api.post("/v1/users", users["admin"], json={"password": CAROL["password"]})
    assert_error(response, 400, details={"username"})


@pytest.mark.parametrize(
    "username",
    ["carol\n", "car\nol", "car\tol", "carol\x00", "car\x1bol", "c" * 65, "", " carol"],
    ids=["trailing-newline", "newline", "tab", "nul", "escape", "too-long", "empty", "space"],
)
def test_an_invalid_username_is_400_naming_it(app, api, users, username):
    assert_error(create(api, users["admin"], username=username), 400, details={"username"})
    assert list(stored_users(app)) == ["admin", "alice", "bob"]


def test_the_longest_valid_username_is_accepted(api, users):
    response = create(api, users["admin"], username="c" * 64)
    assert response.status_code == 201


@pytest.mark.parametrize("is_admin", [1, 0, "true", "yes", None])
def test_is_admin_that_is_not_a_json_boolean_is_400_naming_it(app, api, users, is_admin):
    assert_error(create(api, users["admin"], is_admin=is_admin), 400, details={"is_admin"})
    assert list(stored_users(app)) == ["admin", "alice", "bob"]


def test_a_short_password_is_400_naming_it(api, users):
    assert_error(create(api, users["admin"], password="short7!"), 400, details={"password"})


@pytest.mark.parametrize("body", ["[]", "5", '"bob"'])
def test_a_body_that_is_not_an_object_is_400_with_a_body_message(api, users, body):
    response = api.client.post(
        "/v1/users", data=body, content_type="application/json", headers=bearer(users["admin"])
    )
    error = assert_error(response, 400, details={"body"})
    assert error["details"] == {"body": ["Invalid input type."]}
