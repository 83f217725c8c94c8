"""The relay through the database's outages: PostgreSQL restarted under a running relay (a
private cluster, tests/pgcluster.py), and an outage the app's writer spooled through (every
row reaches the sink after the replay, in id order, no gap)."""

import pytest

import config
from backend import create_app, dispose_engines
from tests.conftest import Api, make_settings, migrate_to_head
from tests.helpers import audit_table_unavailable, make_trail
from tests.relaying import (
    assert_in_order_with_one_batch_again,
    backlog,
    file_rows,
    relaying,
    start_relay,
    wait_for,
    write_sinks,
)
from tests.serving import server_environment

pytestmark = [pytest.mark.faults]

ROWS = 3000
MORE = 300
BATCH = 30


@pytest.fixture(scope="module")
def database(cluster, tmp_path_factory) -> str:
    """A migrated database in the private cluster."""
    url = cluster.create_database("audit", "audit", "audit-relay-outage-password")
    url = config.database_url_for_sqlalchemy(url)
    migrate_to_head(url, tmp_path_factory.mktemp("relay-outage-migrate"))
    return url


def received_ids(receiver) -> list[int]:
    return [row["id"] for row in receiver.rows()]


def trail_ids(app) -> list[int]:
    return [row.id for row in Api(app, None).rows()]


def test_postgresql_restarted_under_the_relay_loses_no_row_and_the_relay_carries_on(
    cluster, database, tmp_path, receiver
):
    sinks_file = write_sinks(
        tmp_path / "sinks.toml",
        {
            "name": "hook",
            "kind": "webhook",
            "url": receiver.url,
            "secret": "shared-secret",
            "batch_size": BATCH,
        },
    )
    app = create_app(make_settings(database, tmp_path, AUDIT_SINKS_FILE=str(sinks_file)))
    backlog(app, ROWS)
    receiver.hang = 0.03  # a slow receiver: the restart comes mid-delivery
    environment = server_environment(database, tmp_path) | {"AUDIT_SINKS_FILE": str(sinks_file)}
    with (tmp_path / "relay.log").open("ab") as log:
        relay = start_relay(environment, log, "--max-backoff", "1")
        try:
            wait_for(lambda: len(receiver.rows()) >= ROWS // 3, "a third of the backlog")
            cluster.restart()
            assert len(receiver.rows()) < ROWS, "the restart did not come mid-delivery"
            dispose_engines(app)  # the connections the restart ended
            backlog(app, MORE)
            expected = trail_ids(app)
            wait_for(lambda: set(received_ids(receiver)) >= set(expected), "every row")
            assert relay.poll() is None, "the relay exited"
        finally:
            relay.terminate()
            assert relay.wait(timeout=30) == 0
            dispose_engines(app)

    assert_in_order_with_one_batch_again(received_ids(receiver), expected, BATCH)


def test_rows_spooled_through_an_outage_reach_the_sink_after_the_replay_in_id_order(
    relay_app, sinks_file, tmp_path
):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    client = relay_app.test_client()
    with relaying(relay_app):
        before = make_trail(client, 2)
        wait_for(lambda: out.exists() and len(file_rows(out)) == 3, "the rows before the outage")
        with audit_table_unavailable(relay_app):
            during = make_trail(client, 3)
        after = make_trail(client, 1)  # its write replays the spool first
        expected = trail_ids(relay_app)
        wait_for(lambda: [row["id"] for row in file_rows(out)][-1:] == expected[-1:], "all")

    rows = file_rows(out)
    assert [row["id"] for row in rows] == expected == list(range(1, len(expected) + 1))
    assert [row["prev_hash"] for row in rows[1:]] == [row["hash"] for row in rows[:-1]]
    assert [row["request_id"] or row["event"] for row in rows if row["event"] != "relay.start"] == [
        *before,
        "audit.spooling",
        *during,
        "audit.replayed",
        *after,
    ]
