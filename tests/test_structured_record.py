"""The structured record (CONTRACT.md, "The structured record"): who did what to what, with
what result, and the facts, on every row; through the HTTP API and the command line."""

import pytest
import sqlalchemy as sa

from backend.audit import chain
from backend.audit.events import REDACTED, outcome_for_status, safe_details
from backend.extensions import db
from backend.models import OUTCOMES, Log, User
from tests.conftest import ALICE, basic, bearer
from tests.helpers import (
    STRUCTURED_FIELDS,
    audit_table_unavailable,
    change_password,
    flask_audit,
    make_trail,
    spooled,
    tampering,
    verify_line,
    write_many,
)

CAROL = {"username": "carol", "password": "carol-password-1"}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def only_row(api, **where) -> Log:
    rows = api.rows(**where)
    assert len(rows) == 1, [(row.id, row.event) for row in rows]
    return rows[0]


def user_id(app, username: str) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.username == username))


def token_id_of(app, username: str) -> int:
    from backend.models import Token

    with app.app_context():
        return db.session.scalar(
            sa.select(sa.func.max(Token.id)).join(Token.user).where(User.username == username)
        )


# --- every act announces itself -------------------------------------------------------------


def test_every_route_that_changes_something_announces_its_acts(app):
    """A new mutating route that announces nothing fails here (backend.signals.announces)."""
    unmarked = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if (rule.methods & MUTATING or rule.rule == "/logout") and not getattr(
            view, "announces", None
        ):
            unmarked.append(f"{sorted(rule.methods & MUTATING)} {rule.rule}")
    assert unmarked == []


def test_the_url_map_has_the_mutating_routes_the_walk_checks(app):
    mutating = {rule.rule for rule in app.url_map.iter_rules() if rule.methods & MUTATING}
    assert {"/login", "/v1/users", "/v1/users/<int:user_id>", "/v1/me/password"} <= mutating


# --- who acted, on what, and what changed ------------------------------------------------------


def test_creating_a_user_names_actor_token_target_and_the_changes(app, api, users):
    response = api.post("/v1/users", users["admin"], json=CAROL)
    assert response.status_code == 201
    row = only_row(api, event="user.create")
    assert (row.user, row.actor_id, row.token_id) == (
        "admin",
        user_id(app, "admin"),
        token_id_of(app, "admin"),
    )
    assert (row.target_type, row.target_id, row.target) == (
        "user",
        str(response.get_json()["id"]),
        "carol",
    )
    assert row.outcome == "success"
    assert row.details == {
        "changes": {
            "username": [None, "carol"],
            "is_admin": [None, False],
            "password": [REDACTED, REDACTED],
        }
    }


def test_everything_done_to_a_user_is_found_by_target(api, users):
    api.post("/v1/users", users["admin"], json=CAROL)
    carol = api.post("/v1/users", users["admin"], json=CAROL)  # taken: a failure on carol
    assert carol.status_code == 409
    page = api.get("/v1/logs?target=carol&order=asc", users["admin"]).get_json()
    assert [(item["event"], item["outcome"]) for item in page["items"]] == [
        ("user.create", "success"),
        ("api.request", "success"),
        ("api.request", "failure"),
    ]
    assert page["items"][2]["details"]["reason"] == "username_taken"


def test_disabling_a_user_records_the_change_and_the_tokens_revoked(app, api, users):
    alice = user_id(app, "alice")
    assert (
        api.client.patch(
            f"/v1/users/{alice}", headers=bearer(users["admin"]), json={"disabled": True}
        ).status_code
        == 200
    )
    disable = only_row(api, event="user.disable")
    assert (disable.target_type, disable.target_id, disable.target) == ("user", str(alice), "alice")
    assert disable.details == {"changes": {"disabled": [False, True]}}
    revoke = only_row(api, event="token.revoke")
    assert (revoke.target, revoke.outcome) == ("alice", "success")
    assert revoke.details == {"changes": {"live_tokens": [1, 0]}, "revoked_tokens": 1}


def test_enabling_a_user_records_the_change(app, api, users):
    alice = user_id(app, "alice")
    for disabled in (True, False):
        api.client.patch(
            f"/v1/users/{alice}", headers=bearer(users["admin"]), json={"disabled": disabled}
        )
    row = only_row(api, event="user.enable")
    assert (row.target, row.details) == ("alice", {"changes": {"disabled": [True, False]}})


def test_a_password_change_is_redacted_on_both_sides(app, api, users):
    response = change_password(api.client, users["alice"], ALICE[1])
    assert response.status_code == 200
    row = only_row(api, event="password.change")
    assert (row.target_type, row.target, row.actor_id) == ("user", "alice", user_id(app, "alice"))
    assert row.details == {"changes": {"password": [REDACTED, REDACTED]}, "revoked_tokens": 1}
    assert ALICE[1] not in str(row.details)


def test_a_wrong_current_password_is_a_failure_with_its_reason(api, users):
    assert change_password(api.client, users["alice"], "not-her-password").status_code == 403
    row = only_row(api, event="password.change.failure")
    assert (row.outcome, row.details["reason"], row.target) == (
        "failure",
        "invalid_password",
        "alice",
    )


# --- outcomes and reasons, while the client's answers stay uniform -----------------------------


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("nobody", "whatever-password", "unknown_user"),
        ("alice", "wrong-password", "invalid_password"),
    ],
)
def test_a_failed_login_says_why_in_the_trail_only(api, users, username, password, reason):
    response = api.client.post("/login", headers=basic(username, password))
    assert response.status_code == 401
    assert reason not in response.get_data(as_text=True)
    row = api.rows(event="login.failure")[-1]
    assert (row.outcome, row.details, row.user) == ("failure", {"reason": reason}, username)


def test_a_disabled_users_login_is_a_failure_for_that_reason(app, api, users):
    api.client.patch(
        f"/v1/users/{user_id(app, 'alice')}",
        headers=bearer(users["admin"]),
        json={"disabled": True},
    )
    assert api.client.post("/login", headers=basic(*ALICE)).status_code == 401
    assert api.rows(event="login.failure")[-1].details == {"reason": "disabled"}


def test_a_login_names_the_user_who_logged_in(app, api, users):
    row = api.rows(event="login.success")[0]
    assert (row.user, row.actor_id, row.outcome) == ("admin", user_id(app, "admin"), "success")


def test_a_request_without_a_token_is_denied_with_its_reason(api):
    assert api.get("/v1/me").status_code == 401
    row = only_row(api, event="api.request")
    assert (row.outcome, row.details) == ("denied", {"reason": "no_token"})


def test_a_non_admin_is_denied_as_not_admin(api, users):
    assert api.get("/v1/users", users["alice"]).status_code == 403
    row = api.rows(event="api.request")[-1]
    assert (row.outcome, row.details["reason"], row.user) == ("denied", "not_admin", "alice")


def test_an_invalid_body_is_a_failure_with_its_reason(api, users):
    assert api.post("/v1/users", users["admin"], json={"username": "x"}).status_code == 400
    row = api.rows(event="api.request")[-1]
    assert (row.outcome, row.details["reason"]) == ("failure", "invalid_body")


def test_a_refused_logout_says_which_problem_the_token_had(api, users):
    api.get("/logout", users["alice"])
    assert api.get("/logout", users["alice"]).status_code == 401
    row = api.rows(event="logout")[-1]
    assert (row.outcome, row.details, row.user) == ("denied", {"reason": "revoked_token"}, "alice")


def test_a_logout_targets_the_token_it_revoked(app, api, users):
    token_id = token_id_of(app, "alice")
    api.get("/logout", users["alice"])
    row = api.rows(event="logout")[-1]
    assert (row.target_type, row.target_id, row.token_id) == ("token", str(token_id), token_id)


@pytest.mark.parametrize(
    ("status", "level", "outcome"),
    [
        (200, "INFO", "success"),
        (304, "INFO", "success"),
        (400, "WARNING", "failure"),
        (401, "WARNING", "denied"),
        (403, "WARNING", "denied"),
        (404, "WARNING", "failure"),
        (429, "WARNING", "denied"),
        (500, "ERROR", "error"),
        (503, "ERROR", "error"),
        (None, "INFO", "success"),
        (None, "ERROR", "error"),
    ],
)
def test_an_outcome_follows_the_contracts_definitions(status, level, outcome):
    assert outcome_for_status(status, level) == outcome
    assert outcome in OUTCOMES


# --- details never hold a secret ----------------------------------------------------------------


def test_details_redact_secrets_whatever_the_caller_passes():
    details = safe_details(
        {
            "password": "hunter2",
            "nested": {"api_token": "abc", "Authorization": "Bearer x", "client_secret": "s"},
            "changes": {"new_password": ["a", "b"], "username": ["x", "y"]},
            "revoked_tokens": 2,
            "token_id": 7,
        }
    )
    assert details == {
        "password": REDACTED,
        "nested": {"api_token": REDACTED, "Authorization": REDACTED, "client_secret": REDACTED},
        "changes": {"new_password": [REDACTED, REDACTED], "username": ["x", "y"]},
        "revoked_tokens": 2,
        "token_id": 7,
    }


def test_details_keep_only_storable_json():
    details = safe_details({"text": "a\x00b", "when": object, "many": list(range(500))})
    assert details["text"] == "a\ufffdb"
    assert details["when"] == str(object)
    assert len(details["many"]) == 100


# --- the audit of the audit -----------------------------------------------------------------------


def test_a_read_of_the_trail_records_its_filters(api, users):
    api.get("/v1/logs?event=login.success&level=INFO,WARNING&limit=5", users["admin"])
    row = api.rows(event="api.request", path="/v1/logs")[-1]
    assert row.target_type == "trail"
    assert row.details["filters"] == {
        "event": "login.success",
        "level": ["INFO", "WARNING"],
        "limit": 5,
        "order": "desc",
    }


def test_a_read_of_one_row_and_of_the_stats_record_what_was_read(api, users):
    api.get("/v1/logs/1", users["admin"])
    api.get("/v1/logs/stats?bucket=day&user=alice", users["admin"])
    one, stats = api.rows(event="api.request")[-2:]
    assert (one.target_type, one.target_id, one.details["filters"]) == ("trail", "1", {"id": 1})
    assert stats.details["filters"] == {"user": "alice", "bucket": "day"}


def test_an_export_records_the_rows_it_sent_when_it_ends(api, users):
    with api.get("/v1/logs/export?event=login.success", users["admin"]) as response:
        lines = response.get_data().splitlines()
    assert len(lines) == 3
    row = only_row(api, event="trail.export")
    assert (row.outcome, row.target_type, row.user) == ("success", "trail", "admin")
    assert row.details["rows"] == 3
    assert row.details["filters"] == {"event": "login.success"}


def test_an_export_the_client_leaves_early_records_what_it_got(api, users):
    write_many(api.app, 5000)  # more than one chunk (FETCH_ROWS)
    response = api.get("/v1/logs/export", users["admin"], buffered=False)
    first = next(iter(response.response))
    assert first
    response.close()
    row = only_row(api, event="trail.export")
    assert (row.outcome, row.details["reason"]) == ("failure", "client_left")
    assert 0 <= row.details["rows"] < 5003


def test_a_command_that_reads_the_trail_records_who_ran_it(api, runner):
    make_trail(api.client, 2)
    assert flask_audit(runner, "verify").exit_code == 0
    row = only_row(api, event="cli.audit.verify")
    assert (row.source, row.target_type, row.outcome) == ("cli", "trail", "success")
    assert {"os_user", "host"} <= set(row.details)
    assert row.details["intact"] is True


def test_a_command_line_export_records_its_rows_and_filters(api, runner):
    make_trail(api.client, 3)
    result = flask_audit(runner, "export", "--event", "index.view")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 3
    row = only_row(api, event="trail.export")
    assert (row.source, row.details["rows"], row.details["filters"]) == (
        "cli",
        3,
        {"event": "index.view"},
    )


def test_a_user_made_at_the_command_line_is_recorded_with_its_changes(api, runner):
    result = runner.invoke(
        args=["users", "create", "dave", "--password-stdin"], input="dave-pw-123\n"
    )
    assert result.exit_code == 0, result.output
    row = only_row(api, event="user.create")
    assert (row.source, row.target, row.actor_id) == ("cli", "dave", None)
    assert row.details["changes"]["username"] == [None, "dave"]
    assert row.details["changes"]["password"] == [REDACTED, REDACTED]


# --- filters ------------------------------------------------------------------------------------


def test_outcome_filters_take_a_list(api, users):
    api.client.post("/login", headers=basic("alice", "wrong-password"))
    api.get("/v1/me")
    page = api.get("/v1/logs?outcome=failure,denied&order=asc", users["admin"]).get_json()
    assert [(item["event"], item["outcome"]) for item in page["items"]] == [
        ("login.failure", "failure"),
        ("api.request", "denied"),
    ]


def test_an_unknown_outcome_is_400_naming_it(api, users):
    response = api.get("/v1/logs?outcome=maybe", users["admin"])
    assert response.status_code == 400
    assert "outcome" in response.get_json()["error"]["details"]


def test_target_type_filters_and_stats_count_it(api, users):
    api.post("/v1/users", users["admin"], json=CAROL)
    page = api.get("/v1/logs?target_type=user", users["admin"]).get_json()
    assert {item["target_type"] for item in page["items"]} == {"user"}
    assert any(item["event"] == "user.create" for item in page["items"])
    stats = api.get("/v1/logs/stats?target_type=user&outcome=success", users["admin"]).get_json()
    assert stats["total"] == len([item for item in page["items"] if item["outcome"] == "success"])


def test_a_non_admin_sees_only_the_rows_where_they_acted(app, api, users):
    """The visibility rule is unchanged: rows that target alice but were done by the admin stay
    the admin's."""
    api.client.patch(
        f"/v1/users/{user_id(app, 'alice')}",
        headers=bearer(users["admin"]),
        json={"disabled": False},
    )
    api.post("/v1/users", users["admin"], json={**CAROL})
    page = api.get("/v1/logs?target=carol", users["alice"]).get_json()
    assert page["items"] == []


def test_the_openapi_document_describes_the_new_fields_and_filters(api):
    spec = api.get("/v1/openapi.json").get_json()
    log = spec["components"]["schemas"]["Log"]["properties"]
    assert set(STRUCTURED_FIELDS) <= set(log)
    assert log["outcome"]["enum"] == list(OUTCOMES)
    parameters = {p["name"] for p in spec["paths"]["/v1/logs"]["get"]["parameters"]}
    assert {"target", "target_type", "outcome"} <= parameters


# --- the service's own events -------------------------------------------------------------------


def test_an_outage_begins_with_audit_spooling_and_ends_with_audit_replayed(app, api, client):
    with audit_table_unavailable(app):
        outage = make_trail(client, 2)
    first = spooled(app)[0]
    assert (first["event"], first["source"], first["outcome"]) == (
        "audit.spooling",
        "system",
        "error",
    )
    make_trail(client, 1)
    rows = api.rows()
    assert [row.event for row in rows] == [
        "audit.spooling",
        "index.view",
        "index.view",
        "audit.replayed",
        "index.view",
    ]
    assert [row.request_id for row in rows[1:3]] == outage
    assert rows[3].details == {"replayed": 3}
    assert rows[0].details["reason"] == "database_unavailable"


@pytest.mark.serving
def test_each_worker_records_its_start_and_graceful_stop(database_url, tmp_path):
    from tests.serving import serving

    with serving(database_url, tmp_path) as (client, _):
        assert client.get("/readyz").status == 200
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(Log.event, Log.source, Log.target_type, Log.target_id).where(
                Log.event.like("service.%")
            )
        ).all()
    engine.dispose()
    starts = sorted(row.target_id for row in rows if row.event == "service.start")
    stops = sorted(row.target_id for row in rows if row.event == "service.stop")
    assert len(starts) == 2  # the two workers of backend/gunicorn_conf.py
    assert stops == starts
    assert {(row.source, row.target_type) for row in rows} == {("system", "service")}


# --- chain version 2 ------------------------------------------------------------------------------


def written_as_version_1(monkeypatch, client, count: int) -> None:
    """`count` rows hashed as before migration 0008 (chain version 1)."""
    monkeypatch.setattr(chain, "CHAIN_VERSION", 1)
    make_trail(client, count)
    monkeypatch.undo()


def test_verify_passes_across_both_chain_versions_and_says_where_they_change(
    monkeypatch, client, runner
):
    written_as_version_1(monkeypatch, client, 3)
    make_trail(client, 2)
    code, line = verify_line(runner)
    assert code == 0
    assert line == (
        "intact: 5 rows (rows 1-5), no signed checkpoint yet;"
        " chain version 1 for rows 1-3, version 2 for rows 4-5"
    )


def test_the_hash_of_version_2_covers_the_structured_record(app, client, runner):
    make_trail(client, 3)
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 2).values(outcome="failure"))
    code, line = verify_line(runner)
    assert (code, line) == (1, "BROKEN at row 2: altered: its hash does not match its content")


def test_the_hash_of_version_2_covers_details_whatever_their_key_order(app, client, runner):
    make_trail(client, 2)
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 1).values(details={"reason": "x"}))
    assert verify_line(runner)[0] == 1


def test_a_row_passed_off_as_an_older_version_is_named(app, client, runner):
    """Someone rewrites a version 2 row as version 1 (which does not cover `outcome`) and
    recomputes the chain from it: the version going back is what gives it away."""
    from tests.helpers import recompute_chain

    make_trail(client, 3)
    with tampering(app) as connection:
        recompute_chain(connection, 2, chain_version=1, outcome="error")
    code, line = verify_line(runner)
    assert (code, line) == (
        1,
        "BROKEN at row 2: chain version 1 after version 2: versions only go up",
    )
