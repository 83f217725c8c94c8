"""Reads of the trail off the primary (DATABASE_REPLICA_URL): a real hot standby, made on this
machine with pg_basebackup and streaming replication (tests/pgcluster.py), of a private primary.

The standby is made to lag by pausing its replay (`pg_wal_replay_pause()`): a row written on
the primary then is on the primary only, so where a read went shows in what it returns.
"""

import json

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

import config
from backend import create_app, dispose_engines
from backend.audit import reads as trail_reads
from tests.conftest import ADMIN, Api, empty_postgresql, make_settings
from tests.helpers import ATTACKER, WRONG, assert_locked, attempt, write
from tests.pgcluster import private_cluster, standby_of
from tests.serving import ADMIN as SERVING_ADMIN
from tests.serving import serving
from tests.streaming import EventReader, rows_of

APP_ROLE = ("audit_app", "audit-app-secret")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """A private primary with a migrated trail database (its owner, and an app role as in
    production), and a hot standby of it: (primary, standby, the apps' environment)."""
    with private_cluster() as primary:
        owner_url = primary.create_database("audit", "audit", "audit-owner-secret")
        primary.execute(f"CREATE ROLE {APP_ROLE[0]} LOGIN PASSWORD '{APP_ROLE[1]}'")
        app_url = f"postgresql://{APP_ROLE[0]}:{APP_ROLE[1]}@127.0.0.1:{primary.port}/audit"
        environment = {"DATABASE_URL": app_url, "DATABASE_ADMIN_URL": owner_url}
        # `flask db upgrade` as the owner gives the app's role its privileges (backend/roles.py).
        app = _app(environment, tmp_path_factory.mktemp("standby"))
        with app.app_context():
            upgrade()
        dispose_engines(app)
        with standby_of(primary) as standby:
            environment["DATABASE_REPLICA_URL"] = (
                f"postgresql://{APP_ROLE[0]}:{APP_ROLE[1]}@127.0.0.1:{standby.port}/audit"
            )
            yield primary, standby, environment


def _app(environment: dict, tmp_path, **extra):
    settings = make_settings(environment["DATABASE_URL"], tmp_path, **environment, **extra)
    return create_app(settings)


@pytest.fixture
def trail(clusters, tmp_path):
    """An empty trail replayed on the standby, an app reading it there, and an admin's token:
    (api, admin token, primary, standby)."""
    primary, standby, environment = clusters
    standby.resume_replay()
    empty_postgresql(config.database_url_for_sqlalchemy(environment["DATABASE_ADMIN_URL"]))
    app = _app(environment, tmp_path, LOGIN_MAX_FAILURES="2")
    api = Api(app, app.test_client())
    api.create_user(*ADMIN, is_admin=True)
    token = api.login(*ADMIN)
    standby.catch_up(primary)
    yield api, token, primary, standby
    standby.resume_replay()
    dispose_engines(app)


@pytest.fixture
def primary_only(clusters, tmp_path):
    """An app of the same service (same SECRET_KEY) with no standby: it reads the primary."""
    environment = {k: v for k, v in clusters[2].items() if k != "DATABASE_REPLICA_URL"}
    app = _app(environment, tmp_path)
    yield app.test_client()
    dispose_engines(app)


def lagging(api, primary, standby, rows: int) -> list[int]:
    """Pause the standby's replay, then write `rows` rows on the primary: their ids."""
    standby.catch_up(primary)
    standby.pause_replay()
    return [write(api.app, track=f"written while the standby lags {n}") for n in range(rows)]


def listed_ids(api, token: str, **params) -> list[int]:
    response = api.get("/v1/logs", token, query_string={"limit": 1000, **params})
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def test_lists_are_read_on_the_standby(trail):
    api, token, primary, standby = trail
    unreplayed = lagging(api, primary, standby, 3)
    assert not set(unreplayed) & set(listed_ids(api, token))
    standby.resume_replay()
    standby.catch_up(primary)
    assert set(unreplayed) <= set(listed_ids(api, token))


def test_stats_are_counted_on_the_standby(trail):
    api, token, primary, standby = trail
    lagging(api, primary, standby, 0)
    before = api.get("/v1/logs/stats", token).get_json()["total"]
    for _ in range(3):
        write(api.app, track="written while the standby lags")
    assert api.get("/v1/logs/stats", token).get_json()["total"] == before
    standby.resume_replay()
    standby.catch_up(primary)
    # The three rows, and the two stats requests' own rows.
    assert api.get("/v1/logs/stats", token).get_json()["total"] == before + 5


def test_exports_are_read_on_the_standby(trail):
    api, token, primary, standby = trail
    unreplayed = lagging(api, primary, standby, 3)
    response = api.get("/v1/logs/export", token)
    assert response.status_code == 200
    exported = [json.loads(line)["id"] for line in response.data.decode().splitlines()]
    assert exported and not set(unreplayed) & set(exported)


def test_flask_audit_export_reads_the_standby(trail):
    api, token, primary, standby = trail
    unreplayed = lagging(api, primary, standby, 3)
    result = api.app.test_cli_runner().invoke(args=["audit", "export"])
    assert result.exit_code == 0, result.output
    exported = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert exported and not set(unreplayed) & set(exported)


def test_a_row_the_standby_has_not_replayed_is_read_on_the_primary(trail):
    api, token, primary, standby = trail
    newest = lagging(api, primary, standby, 1)[0]
    response = api.get(f"/v1/logs/{newest}", token)
    assert response.status_code == 200
    assert response.get_json()["track"] == "written while the standby lags 0"


@pytest.mark.usefixtures("stopped_clock")  # Retry-After to the second
def test_logins_and_lockouts_go_to_the_primary_while_the_standby_lags(trail):
    api, token, primary, standby = trail
    lagging(api, primary, standby, 1)
    login = api.client.post("/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert login.status_code == 200
    for _ in range(2):
        assert attempt(api.client, ADMIN[0], WRONG).status_code == 401
    assert_locked(attempt(api.client, ADMIN[0], WRONG), 60)
    events = [row.event for row in api.rows(ip=ATTACKER)]
    assert events == ["login.failure", "login.failure", "login.locked"]


def test_a_cursor_the_standby_has_not_reached_continues_on_the_primary(trail, primary_only):
    api, token, primary, standby = trail
    unreplayed = lagging(api, primary, standby, 6)
    # A page made on the primary (as while the standby was down): its cursor is in rows the
    # standby does not hold yet.
    first = primary_only.get(
        "/v1/logs", headers={"Authorization": f"Bearer {token}"}, query_string={"limit": 3}
    ).get_json()
    second = api.get("/v1/logs", token, query_string={"limit": 3, "after": first["next"]})
    seen = [item["id"] for item in first["items"] + second.get_json()["items"]]
    assert seen == sorted(unreplayed, reverse=True)


def test_paging_oldest_first_while_the_standby_lags_sees_each_row_once(trail):
    api, token, primary, standby = trail
    for number in range(6):
        write(api.app, track=f"written before the client pages {number}")
    seen, after = [], None
    for _ in range(100):
        if len(seen) < 12:
            lagging(api, primary, standby, 2)  # written while the client pages, not replayed
        else:
            standby.catch_up(primary)
        params = {"limit": 2, "order": "asc", **({"after": after} if after else {})}
        body = api.get("/v1/logs", token, query_string=params).get_json()
        seen += [item["id"] for item in body["items"]]
        standby.resume_replay()
        if body["next"] is None:
            break
        after = body["next"]
    # Every row, once, in order, but the last page's own api.request row (written after it).
    assert seen == [row.id for row in api.rows()][:-1]


def test_reads_fall_back_to_the_primary_while_the_standby_is_down(trail, monkeypatch):
    api, token, primary, standby = trail
    standby.stop()
    try:
        newest = write(api.app, track="written while the standby is down")
        assert newest in listed_ids(api, token)
        ready = api.client.get("/readyz")
        assert ready.status_code == 200
        assert (ready.get_json()["reads"], ready.get_json()["standby"]) == ("primary", "down")
    finally:
        standby.start()
    monkeypatch.setattr(trail_reads, "RETRY_AFTER", 0.0)  # try the standby again at once
    ready = api.client.get("/readyz").get_json()
    assert (ready["reads"], ready["standby"]) == ("standby", "up")


def on_standby(app) -> list[str]:
    """The statements the app runs on the standby from now on (as the driver is handed them)."""
    statements: list[str] = []

    def note(connection, cursor, statement, *rest):
        statements.append(statement)

    sa.event.listen(app.extensions["audit_reads"].engine, "before_cursor_execute", note)
    return statements


def test_proofs_are_read_on_the_standby(trail, primary_only):
    api, token, primary, standby = trail
    ids = [write(api.app, track=f"to prove {n}") for n in range(3)]
    signed = api.get(f"/v1/logs/{ids[-1]}/proof", token)  # signs a head covering the rows
    assert signed.status_code == 200, signed.get_json()
    size = signed.get_json()["tree_size"]
    standby.catch_up(primary)
    statements = on_standby(api.app)

    inclusion = api.get(f"/v1/logs/{ids[0]}/proof", token, query_string={"tree_size": size})
    consistency = api.get("/v1/logs/consistency", token, query_string={"first": 2, "second": size})

    assert [s for s in statements if "audit_tree_node" in s] != []
    # One look a request at whether the standby holds the rows (the proof's visibility too).
    assert len([s for s in statements if "max(audit_log.id)" in s]) == 2
    bearer_token = {"Authorization": f"Bearer {token}"}
    for answer, path, params in (
        (inclusion, f"/v1/logs/{ids[0]}/proof", {"tree_size": size}),
        (consistency, "/v1/logs/consistency", {"first": 2, "second": size}),
    ):  # the primary's answer is the same
        assert answer.status_code == 200, answer.get_json()
        expected = primary_only.get(path, headers=bearer_token, query_string=params)
        assert answer.get_json() == expected.get_json()


def test_a_proof_of_a_row_the_standby_has_not_replayed_comes_from_the_primary(trail):
    api, token, primary, standby = trail
    newest = lagging(api, primary, standby, 1)[0]
    statements = on_standby(api.app)
    response = api.get(f"/v1/logs/{newest}/proof", token)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["tree_size"] >= newest  # a head signed for it, on the primary
    assert [s for s in statements if "audit_tree_node" in s] == []


def test_a_stream_catches_up_on_the_standby_then_follows_the_primary(trail):
    api, token, primary, standby = trail
    replayed = [write(api.app, track=f"before the stream {n}") for n in range(3)]
    unreplayed = lagging(api, primary, standby, 2)
    statements = on_standby(api.app)
    response = api.client.get(
        "/v1/logs/stream?after_id=0&event=test.event", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        events = EventReader(response.response).next_events(5)
    finally:
        response.close()
    # Every row once, in order: the replayed ones from the standby, the rest from the primary.
    assert [row["id"] for row in rows_of(events)] == replayed + unreplayed
    assert [s for s in statements if "audit_log.id >" in s] != []


def test_readyz_says_reads_go_to_the_standby(trail):
    api = trail[0]
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert (response.get_json()["reads"], response.get_json()["standby"]) == ("standby", "up")


@pytest.mark.serving
def test_the_served_app_reads_the_trail_on_the_standby(clusters, tmp_path):
    primary, standby, environment = clusters
    standby.resume_replay()
    empty_postgresql(config.database_url_for_sqlalchemy(environment["DATABASE_ADMIN_URL"]))
    with serving(environment["DATABASE_URL"], tmp_path, **environment) as (client, _):
        token = client.post("/login", basic=SERVING_ADMIN).body["token"]
        standby.catch_up(primary)
        assert client.get("/readyz").body["reads"] == "standby"
        standby.pause_replay()
        try:
            unreplayed = client.get("/v1/me", token=token).headers["X-Request-ID"]
            listed = client.get("/v1/logs", token=token).body["items"]
        finally:
            standby.resume_replay()
    assert listed and unreplayed not in [item["request_id"] for item in listed]
    on_primary = primary.execute(
        f"SELECT count(*) FROM audit_log WHERE request_id = '{unreplayed}'", "audit"
    )
    assert on_primary == 1
