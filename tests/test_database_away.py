"""While PostgreSQL is away (a restart, a failover), requests answer 503 with Retry-After, which
load balancers and clients retry, never 500 (issue "What an outside attacker found", finding 3).

The app runs in process against a private cluster (tests/pgcluster.py) that each test stops.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

import config
from backend import create_app, dispose_engines
from backend.accounts import create_user
from tests.conftest import ALICE, Api, basic, bearer, make_settings, migrate_to_head
from tests.helpers import assert_error
from tests.pgcluster import PrivateCluster
from tests.streaming import EventReader


@pytest.fixture(scope="module")
def database(cluster, tmp_path_factory) -> str:
    """A migrated database in the private cluster, with alice."""
    url = cluster.create_database("audit", "audit", "audit-away-password")
    url = config.database_url_for_sqlalchemy(url)
    migrate_to_head(url, tmp_path_factory.mktemp("away-migrate"))
    app = create_app(make_settings(url, tmp_path_factory.mktemp("away-setup")))
    with app.app_context():
        create_user(*ALICE)
    dispose_engines(app)
    return url


@pytest.fixture
def app(database, tmp_path):
    app = create_app(make_settings(database, tmp_path))
    yield app
    dispose_engines(app)


@contextmanager
def database_stopped(cluster: PrivateCluster) -> Iterator[None]:
    cluster.stop("fast")
    try:
        yield
    finally:
        cluster.start()


def assert_retry_later(response) -> None:
    assert_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 1


def test_a_bearer_token_request_answers_503_while_the_database_is_away(app, cluster):
    client = app.test_client()
    token = client.post("/login", headers=basic(*ALICE)).get_json()["token"]
    with database_stopped(cluster):
        assert_retry_later(client.get("/v1/me", headers=bearer(token)))
    assert client.get("/v1/me", headers=bearer(token)).status_code == 200


def test_a_login_answers_503_while_the_database_is_away(app, cluster):
    client = app.test_client()
    with database_stopped(cluster):
        assert_retry_later(client.post("/login", headers=basic(*ALICE)))
    assert client.post("/login", headers=basic(*ALICE)).status_code == 200


def test_a_request_the_database_was_away_for_leaves_a_request_exception_row(app, cluster):
    """Spooled while the database is away, replayed once it is back."""
    client = app.test_client()
    with database_stopped(cluster):
        refused = client.post("/login", headers=basic(*ALICE))
    assert client.post("/login", headers=basic(*ALICE)).status_code == 200  # replays the spool
    [row] = Api(app, client).rows(request_id=refused.headers["X-Request-ID"])
    assert (row.event, row.level, row.status) == ("request.exception", "ERROR", 503)
    assert row.track.startswith("sqlalchemy.exc.OperationalError: connection failed")


def test_a_stream_the_database_goes_away_under_ends_and_leaves_an_error_row(
    database, tmp_path, cluster
):
    """The live tail polls the database: when it is gone the stream ends (the client's
    EventSource reconnects with Last-Event-ID), and its `trail.stream` row says an error ended
    it, spooled and replayed once the database is back."""
    settings = make_settings(
        database, tmp_path, STREAM_POLL_SECONDS="0.05", STREAM_HEARTBEAT_SECONDS="0.1"
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        token = client.post("/login", headers=basic(*ALICE)).get_json()["token"]
        response = client.get("/v1/logs/stream", headers=bearer(token))
        assert response.status_code == 200
        assert EventReader(response.response).next_comment() == "stream of the audit trail"
        with database_stopped(cluster), pytest.raises(sa.exc.DBAPIError):
            # The stream's next poll finds no database; a stream that went on instead would
            # send heartbeats, and this loop end without the error.
            for _ in zip(range(50), response.response, strict=False):
                pass
        response.close()
        assert client.get("/v1/me", headers=bearer(token)).status_code == 200  # replays
        [row] = Api(app, client).rows(event="trail.stream")
        assert (row.user, row.level, row.outcome) == ("alice", "ERROR", "error")
        assert (row.details["ended"], row.details["rows"]) == ("error", 0)
        assert row.track.endswith("ended, an error: 0 rows sent")
    finally:
        dispose_engines(app)
