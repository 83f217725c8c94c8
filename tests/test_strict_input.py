"""Strict, consistent input (issue "A newcomer's first hour", item 5): a body that is not JSON
is a 415 (a login so refused still leaves its row), user names are unique regardless of case,
ids beyond what a table holds are a 404, a repeated parameter is a 400 naming it, and the API
and the CLI take the same spellings of a moment. On SQLite and PostgreSQL."""

from datetime import UTC, datetime

import click
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade

import config
from backend.extensions import db
from backend.models import User, fold_username
from backend.roles import owner_engine
from tests.conftest import ALICE, basic, bearer
from tests.helpers import (
    assert_error,
    assert_foreign_keys_enforced,
    latest_migration,
    schema_version,
    stored_users,
)

FORM = "application/x-www-form-urlencoded"


# --- a body that is not JSON -------------------------------------------------------------------


def test_a_form_encoded_login_is_415_and_leaves_a_login_failure_row(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", data={"username": ALICE[0], "password": ALICE[1]})
    error = assert_error(response, 415)
    assert "application/json" in error["message"]
    [row] = api.rows(event="login.failure")
    assert (row.level, row.status, row.user, row.path) == ("WARNING", 415, None, "/login")
    assert row.track == f"refused: the body is {FORM}, not JSON"
    assert (row.outcome, row.details) == ("failure", {"reason": "body_not_json"})


def test_a_login_with_basic_credentials_and_a_form_body_is_refused_in_its_users_name(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", headers=basic(*ALICE), data={"remember": "1"})
    assert_error(response, 415)
    assert [(row.event, row.user, row.status) for row in api.rows()] == [
        ("login.failure", ALICE[0], 415)
    ]
    assert api.rows(event="login.success") == []


def test_a_json_login_with_a_charset_is_json(api, client):
    api.create_user(*ALICE)
    body = f'{{"username": "{ALICE[0]}", "password": "{ALICE[1]}"}}'
    response = client.post(
        "/login", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200


def test_a_form_encoded_new_user_is_415_and_creates_nobody(app, api, users):
    response = api.post(
        "/v1/users", users["admin"], data={"username": "carol", "password": "x" * 9}
    )
    assert_error(response, 415)
    assert "carol" not in stored_users(app)
    [row] = api.rows(event="api.request", path="/v1/users")
    assert (row.status, row.level) == (415, "WARNING")


def test_a_json_body_sent_without_a_content_type_is_415(api, users):
    response = api.client.put(
        "/v1/me/password",
        headers=bearer(users["alice"]),
        data=f'{{"current_password": "{ALICE[1]}", "new_password": "another-password-1"}}',
    )
    assert_error(response, 415)
    assert api.login(*ALICE)  # the password did not change


def test_openapi_says_every_route_with_a_body_may_answer_415(client):
    document = client.get("/v1/openapi.json").get_json()
    with_body = [
        operation
        for operations in document["paths"].values()
        for operation in operations.values()
        if "requestBody" in operation
    ]
    assert len(with_body) >= 4
    assert all("415" in operation["responses"] for operation in with_body)


# --- user names regardless of case -----------------------------------------------------------


@pytest.mark.parametrize("name", ["Alice", "ALICE", "aLiCe"])
def test_a_name_that_differs_only_in_case_is_taken(app, api, users, name):
    response = api.post(
        "/v1/users", users["admin"], json={"username": name, "password": "a-long-password"}
    )
    error = assert_error(response, 409)
    assert error["message"] == (
        f"The username {name!r} is taken, as 'alice' (user names are unique regardless of case)."
    )
    assert name not in stored_users(app)


def test_the_cli_refuses_a_name_in_another_case(api, runner):
    api.create_user(*ALICE)
    result = runner.invoke(
        args=["users", "create", "ALICE", "--password-stdin"], input="a-long-password\n"
    )
    assert result.exit_code == 1
    assert "'ALICE' is taken, as 'alice'" in result.output


def test_the_database_itself_refuses_a_name_that_folds_to_a_taken_one(app, api):
    api.create_user(*ALICE)
    with app.app_context(), pytest.raises(sa.exc.IntegrityError):
        db.session.add(User(username="Alice", password_hash="x"))
        db.session.commit()


def test_folding_is_nfkc_then_casefold():
    assert fold_username("ＡＬＩＣＥ") == "alice"  # fullwidth letters (NFKC)
    assert fold_username("Straße") == fold_username("STRASSE") == "strasse"  # casefold, not lower
    assert fold_username("ﬁle") == "file"  # a ligature


def previous_revision() -> str:
    """The revision the usernames' migration (0011) follows."""
    return ScriptDirectory(str(config.ROOT / "migrations")).get_revision("0011").down_revision


def test_the_migration_names_clashing_users_and_changes_nothing(app):
    before = previous_revision()
    insert = sa.text(
        "INSERT INTO users (id, username, password_hash, is_admin, created_at)"
        " VALUES (:id, :name, 'x', false, :at)"
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with app.app_context():
        downgrade(revision=before)
        with owner_engine().begin() as connection:
            for user_id, name in ((1, "Alice"), (2, "bob"), (3, "alice"), (4, "BOB")):
                connection.execute(insert, {"id": user_id, "name": name, "at": at})
        with pytest.raises(click.ClickException) as raised:
            upgrade()
        assert schema_version(app) == [before]
        assert_foreign_keys_enforced(app)  # after a failed migration too
        assert "'Alice' (id 1) and 'alice' (id 3); 'bob' (id 2) and 'BOB' (id 4)" in str(
            raised.value.message
        )
        assert "Nothing was changed" in raised.value.message
        with owner_engine().begin() as connection:
            connection.execute(sa.text("UPDATE users SET username = 'alice-2' WHERE id = 3"))
            connection.execute(sa.text("DELETE FROM users WHERE id = 4"))
        upgrade()
        folded = db.session.execute(sa.select(User.username, User.folded_username)).all()
    assert schema_version(app) == [latest_migration()]
    assert sorted(folded) == [("Alice", "alice"), ("alice-2", "alice-2"), ("bob", "bob")]


# --- ids beyond what a table holds -------------------------------------------------------------


@pytest.mark.parametrize("user_id", [2**31, 151783407602, 2**63, 2**64 + 1, 10**30])
def test_a_user_id_beyond_the_table_is_404(api, users, user_id):
    response = api.client.patch(
        f"/v1/users/{user_id}", headers=bearer(users["admin"]), json={"disabled": True}
    )
    assert_error(response, 404)


@pytest.mark.parametrize("log_id", [2**63, 2**64 + 1, 10**30])
def test_a_log_id_beyond_64_bits_is_404(api, users, log_id):
    assert_error(api.get(f"/v1/logs/{log_id}", users["admin"]), 404)


# --- one value per parameter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        ("/v1/logs", "user=admin&user=alice", "user"),
        ("/v1/logs", "limit=5&limit=500", "limit"),
        ("/v1/logs", "level=INFO&level=ERROR", "level"),
        ("/v1/logs/export", "format=csv&format=ndjson", "format"),
        ("/v1/logs/stats", "bucket=day&bucket=hour", "bucket"),
    ],
)
def test_a_repeated_parameter_is_a_400_naming_it(api, users, path, query, named):
    error = assert_error(api.get(f"{path}?{query}", users["admin"]), 400, {named})
    assert "give it once, not 2 times" in error["details"][named][0]


# --- one set of time forms, API and CLI --------------------------------------------------------

MIDNIGHT = "2026-12-04T00:00:00.000000Z"


@pytest.mark.parametrize(
    "since",
    [
        "2026-12-04",
        "2026-12-04T00:00:00Z",
        "2026-12-04T01:00:00+01:00",
        "2026-12-04T00:00:00 00:00",
    ],
    ids=["date", "z", "offset", "unencoded-plus"],
)
def test_the_api_takes_every_accepted_form_of_a_moment(api, users, since):
    response = api.get(f"/v1/logs/stats?since={since}&until=2026-12-05", users["admin"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["since"], body["until"]) == (MIDNIGHT, "2026-12-05T00:00:00.000000Z")


@pytest.mark.parametrize("since", ["2026-12-04", "2026-12-04T01:00:00+01:00"])
def test_the_cli_export_takes_the_same_forms(api, runner, since):
    api.client.get("/")
    result = runner.invoke(args=["audit", "export", "--since", since])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1  # the row of GET /, made today, after the bound


@pytest.mark.parametrize("since", ["04/12/2026", "2026-12-04T10:00:00", "2026-02-30"])
def test_a_bad_moment_is_refused_with_an_accepted_example(api, users, runner, since):
    error = assert_error(api.get(f"/v1/logs?since={since}", users["admin"]), 400, {"since"})
    [message] = error["details"]["since"]
    assert "2026-11-21T10:00:00Z" in message and "2026-11-21 (midnight UTC)" in message
    result = runner.invoke(args=["audit", "export", "--since", since])
    assert result.exit_code == 1
    assert message in result.output
