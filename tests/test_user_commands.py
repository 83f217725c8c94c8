"""`flask users list`, `set-password`, `disable`, `enable`, and what `ensure-admin` says of an
ADMIN_PASSWORD it does not apply: the API's acts from the command line, audited and revoking
tokens as the API does (issue "A newcomer's first hour", item 4). On SQLite and PostgreSQL."""

import pytest

from backend import create_app, dispose_engines
from tests.conftest import ADMIN, ALICE, basic, bearer, make_settings

NEW_PASSWORD = "a-brand-new-password"


def users_command(runner, *args: str, input: str | None = None):
    return runner.invoke(args=["users", *args], input=input)


def logs_in(client, username: str, password: str) -> bool:
    return client.post("/login", headers=basic(username, password)).status_code == 200


def token_works(client, token: str) -> bool:
    return client.get("/v1/me", headers=bearer(token)).status_code == 200


def cli_rows(api, event: str) -> list:
    return [row for row in api.rows(event=event) if row.source == "cli"]


def test_list_names_every_user_with_role_and_state(api, runner):
    api.create_user(*ADMIN, True)
    api.create_user(*ALICE)
    users_command(runner, "disable", "alice")
    lines = users_command(runner, "list").output.splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["1", "admin", "admin", "active"],
        ["2", "alice", "user", "disabled"],
    ]
    assert all(" created 20" in line for line in lines)


def test_list_of_no_users_says_how_to_make_one(runner):
    result = users_command(runner, "list")
    assert (result.exit_code, result.output) == (
        0,
        "no users yet: flask users create NAME --admin\n",
    )


def test_set_password_replaces_a_lost_password_and_revokes_every_token(api, client, runner):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    result = users_command(runner, "set-password", "alice", "--password-stdin", input=NEW_PASSWORD)
    assert (result.exit_code, result.output) == (0, "password of alice set; 1 tokens revoked\n")
    assert not token_works(client, token)
    assert not logs_in(client, *ALICE)
    assert logs_in(client, "alice", NEW_PASSWORD)


def test_set_password_is_a_row_naming_the_user_and_the_os_account(api, runner):
    api.create_user(*ALICE)
    users_command(runner, "set-password", "alice", "--password-stdin", input=NEW_PASSWORD)
    [row] = cli_rows(api, "password.change")
    assert row.level == "WARNING"
    assert (row.target_type, row.target) == ("user", "alice")
    assert row.details["changes"] == {"password": ["[redacted]", "[redacted]"]}
    assert row.track.startswith("set the password of alice; tokens revoked: 0 (by ")
    assert NEW_PASSWORD not in row.track


def test_set_password_prompts_twice_hidden(api, client, runner):
    api.create_user(*ALICE)
    result = users_command(runner, "set-password", "alice", input=f"{NEW_PASSWORD}\n" * 2)
    assert result.exit_code == 0
    assert NEW_PASSWORD not in result.output  # hidden
    assert result.output.startswith("New password: \nRepeat for confirmation: \n")
    assert logs_in(client, "alice", NEW_PASSWORD)


def test_set_password_finds_the_name_in_any_case(api, client, runner):
    api.create_user(*ALICE)
    users_command(runner, "set-password", "ALICE", "--password-stdin", input=NEW_PASSWORD)
    assert logs_in(client, "alice", NEW_PASSWORD)


def test_set_password_refuses_a_short_password_and_changes_nothing(api, client, runner):
    api.create_user(*ALICE)
    result = users_command(runner, "set-password", "alice", "--password-stdin", input="short")
    assert result.exit_code == 1
    assert result.output == "Error: password: Length must be between 8 and 1024.\n"
    assert logs_in(client, *ALICE)
    assert cli_rows(api, "password.change") == []


@pytest.mark.parametrize("command", ["set-password", "disable", "enable"])
def test_a_command_on_an_unknown_user_exits_1_saying_so(runner, command):
    result = users_command(runner, command, "nobody", "--password-stdin", input=NEW_PASSWORD)
    if command != "set-password":
        result = users_command(runner, command, "nobody")
    assert result.exit_code == 1
    assert result.output == "Error: no user is called 'nobody' (flask users list names them)\n"


def test_disable_refuses_logins_revokes_tokens_and_is_recorded(api, client, runner):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    result = users_command(runner, "disable", "alice")
    assert (result.exit_code, result.output) == (0, "disabled user alice; tokens revoked: 1\n")
    assert not token_works(client, token)
    assert not logs_in(client, *ALICE)
    [row] = cli_rows(api, "user.disable")
    assert row.track.startswith("disabled user alice; tokens revoked: 1 (by ")
    assert (row.target_type, row.target, row.outcome) == ("user", "alice", "success")
    assert row.details["changes"] == {"disabled": [False, True]}
    assert {"os_user", "host"} <= set(row.details)
    [revoked] = cli_rows(api, "token.revoke")
    assert (revoked.target, revoked.details["revoked_tokens"]) == ("alice", 1)


def test_disabling_a_disabled_user_changes_nothing_and_records_nothing(api, runner):
    api.create_user(*ALICE)
    users_command(runner, "disable", "alice")
    result = users_command(runner, "disable", "alice")
    assert (result.exit_code, result.output) == (0, "alice is already disabled; nothing changed\n")
    assert len(cli_rows(api, "user.disable")) == 1


def test_enable_lets_a_disabled_user_log_in_again(api, client, runner):
    api.create_user(*ALICE)
    users_command(runner, "disable", "alice")
    result = users_command(runner, "enable", "alice")
    assert (result.exit_code, result.output) == (0, "enabled user alice\n")
    assert logs_in(client, *ALICE)
    [row] = cli_rows(api, "user.enable")
    assert row.level == "INFO"


@pytest.fixture
def admin_app(database_url, tmp_path):
    """An app whose ADMIN_PASSWORD is not the password the admin `root` has."""
    app = create_app(
        make_settings(database_url, tmp_path, ADMIN_USERNAME="root", ADMIN_PASSWORD=NEW_PASSWORD)
    )
    yield app
    dispose_engines(app)


def test_ensure_admin_says_when_admin_password_was_not_applied(admin_app):
    from tests.conftest import Api

    Api(admin_app, admin_app.test_client()).create_user("root", "the-first-password", True)
    result = admin_app.test_cli_runner().invoke(args=["users", "ensure-admin"])
    assert (result.exit_code, result.output) == (
        0,
        "admin root exists: ADMIN_PASSWORD was not applied"
        " (to change the password: flask users set-password root)\n",
    )
    assert logs_in(admin_app.test_client(), "root", "the-first-password")
