"""GET /v1/sinks and /readyz's `sinks`: each sink's cursor, lag and state, for admins."""

from tests.helpers import assert_error, write
from tests.relaying import relay_once, write_sinks


def configure(sinks_file, tmp_path, receiver) -> None:
    write_sinks(
        sinks_file,
        {"name": "archive", "kind": "file", "path": str(tmp_path / "trail.ndjson")},
        {"name": "hook", "kind": "webhook", "url": receiver.url, "secret": "shared-secret"},
    )


def login_admin(relay_app):
    from tests.conftest import ADMIN, Api

    api = Api(relay_app, relay_app.test_client())
    api.create_user(*ADMIN, is_admin=True)
    return api, api.issue_token(ADMIN[0])


def test_sinks_lists_each_sink_with_its_cursor_and_lag(relay_app, sinks_file, tmp_path, receiver):
    configure(sinks_file, tmp_path, receiver)
    api, token = login_admin(relay_app)
    ids = [write(relay_app) for _ in range(3)]
    receiver.answers = [500] * 100
    relay_once(relay_app, "--max-backoff", "0.1")
    newest = write(relay_app)

    response = api.get("/v1/sinks", token)

    assert response.status_code == 200
    archive, hook = response.get_json()["items"]
    assert archive == {
        "name": "archive",
        "kind": "file",
        "delivered_id": ids[-1],
        "lag": newest - ids[-1],
        "state": "running",
        "last_error": None,
        "failures": 0,
    }
    assert (hook["delivered_id"], hook["lag"], hook["state"]) == (0, newest, "failing")
    assert hook["last_error"] == f"{receiver.url}: answered 500"
    assert hook["failures"] == 5


def test_a_sink_no_relay_ever_ran_is_stopped(relay_app, sinks_file, tmp_path, receiver):
    configure(sinks_file, tmp_path, receiver)
    api, token = login_admin(relay_app)

    items = api.get("/v1/sinks", token).get_json()["items"]

    assert [(item["name"], item["state"], item["delivered_id"]) for item in items] == [
        ("archive", "stopped", 0),
        ("hook", "stopped", 0),
    ]


def test_sinks_is_for_admins_only(relay_app, sinks_file, tmp_path, receiver):
    from tests.conftest import ALICE, Api

    configure(sinks_file, tmp_path, receiver)
    api = Api(relay_app, relay_app.test_client())
    api.create_user(*ALICE)

    assert_error(api.get("/v1/sinks", api.issue_token(ALICE[0])), 403)
    assert_error(api.get("/v1/sinks"), 401)


def test_a_bad_sinks_file_is_a_503_naming_the_key(relay_app, sinks_file):
    write_sinks(sinks_file, {"name": "x", "kind": "file"})
    api, token = login_admin(relay_app)

    body = assert_error(api.get("/v1/sinks", token), 503)

    assert 'sink "x": key "path": is required' in body["message"]


def test_readyz_shows_each_sinks_lag_and_stays_ready(relay_app, sinks_file, tmp_path, receiver):
    configure(sinks_file, tmp_path, receiver)
    newest = [write(relay_app) for _ in range(2)][-1]

    response = relay_app.test_client().get("/readyz")

    assert response.status_code == 200
    assert response.get_json()["sinks"] == [
        {"name": "archive", "state": "stopped", "lag": newest},
        {"name": "hook", "state": "stopped", "lag": newest},
    ]


def test_readyz_without_sinks_has_no_sinks_field(client):
    assert "sinks" not in client.get("/readyz").get_json()
