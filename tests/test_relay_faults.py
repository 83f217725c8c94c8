"""The relay under faults, as processes: killed with SIGKILL mid-delivery and started again
(every row arrives, in order, at most one batch twice, no gap); a webhook answering 500 for a
while then 200 is in tests/test_relay.py, rsyslog stopped and started in test_relay_syslog.py."""

import json
import signal
import time

import pytest

from tests.relaying import (
    assert_in_order_with_one_batch_again,
    backlog,
    start_relay,
    write_sinks,
)
from tests.serving import server_environment

pytestmark = [pytest.mark.faults]

ROWS = 3000
BATCH = 100
DEADLINE = 60.0


def backlog_sink(out) -> dict:
    """A file sink of the backlog's rows (the relay's own rows, relay.start..., go elsewhere)."""
    return {
        "name": "archive",
        "kind": "file",
        "path": str(out),
        "batch_size": BATCH,
        "events": ["test.event"],
    }


def delivered_ids(path) -> list[int]:
    """The ids of the complete lines, read as a shipper tails the file: a last line without its
    end is still being written, or was torn by the kill (the sink cuts it when it opens again)."""
    if not path.exists():
        return []
    *complete, _partial = path.read_text().split("\n")
    return [json.loads(line)["id"] for line in complete]


def test_a_relay_killed_mid_delivery_resends_at_most_one_batch_and_leaves_no_gap(
    relay_app, database_url, sinks_file, tmp_path
):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, backlog_sink(out))
    backlog(relay_app, ROWS)
    environment = server_environment(database_url, tmp_path) | {"AUDIT_SINKS_FILE": str(sinks_file)}
    with (tmp_path / "relay.log").open("ab") as log:
        relay = start_relay(environment, log)
        deadline = time.monotonic() + DEADLINE
        while len(delivered_ids(out)) < ROWS // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.send_signal(signal.SIGKILL)
        relay.wait(timeout=10)
        at_kill = len(delivered_ids(out))
        assert ROWS // 3 <= at_kill < ROWS, "the relay was not killed mid-delivery"

        relay = start_relay(environment, log)
        try:
            while len(set(delivered_ids(out))) < ROWS and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            relay.terminate()
            relay.wait(timeout=10)

    assert out.read_bytes().endswith(b"\n"), "a torn last line was left in the file"
    assert_in_order_with_one_batch_again(delivered_ids(out), list(range(1, ROWS + 1)), BATCH)


def test_a_relay_stopped_with_sigterm_finishes_its_batch_and_resends_nothing(
    relay_app, database_url, sinks_file, tmp_path
):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, backlog_sink(out))
    backlog(relay_app, 1000)
    environment = server_environment(database_url, tmp_path) | {"AUDIT_SINKS_FILE": str(sinks_file)}
    with (tmp_path / "relay.log").open("ab") as log:
        relay = start_relay(environment, log)
        deadline = time.monotonic() + DEADLINE
        while not delivered_ids(out) and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.terminate()
        assert relay.wait(timeout=10) == 0
        relay = start_relay(environment, log)
        try:
            while len(set(delivered_ids(out))) < 1000 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            relay.terminate()
            relay.wait(timeout=10)

    assert delivered_ids(out) == list(range(1, 1001))
