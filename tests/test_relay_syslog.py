"""The syslog sink against Debian's rsyslogd: RFC 5424 with octet-counted framing over TCP and
TLS, parsed by rsyslog's own parser; every row once, in id order."""

import json

from backend.relay.syslog import FIELDS, message
from tests.helpers import write
from tests.relaying import relay_once, write_sinks
from tests.rsyslog import rsyslog


def syslog_sink(server, **more) -> dict:
    return {"name": "siem", "kind": "syslog", "address": server.address, **more}


def test_rsyslog_parses_each_row_as_rfc5424_with_its_id_in_structured_data(
    relay_app, sinks_file, tmp_path
):
    ids = [write(relay_app, event="login.failure", track=f"try {n}") for n in range(3)]
    with rsyslog(tmp_path / "rsyslog") as server:
        write_sinks(sinks_file, syslog_sink(server))
        result = relay_once(relay_app)
        received = server.wait_for(3)

    assert result.exit_code == 0, result.output
    assert [msgid for msgid, _, _ in received] == ["login.failure"] * 3
    rows = [json.loads(msg) for _, _, msg in received]
    assert [row["id"] for row in rows] == ids
    assert [data for _, data, _ in received] == [
        f'[audit@32473 id="{row["id"]}" event_id="{row["event_id"]}" hash="{row["hash"]}"]'
        for row in rows
    ]


def test_a_row_with_newlines_and_unicode_stays_one_message(relay_app, sinks_file, tmp_path):
    track = 'line one\nline two ] " \\ ünïcode'
    row_id = write(relay_app, track=track)
    with rsyslog(tmp_path / "rsyslog") as server:
        write_sinks(sinks_file, syslog_sink(server))
        relay_once(relay_app)
        [[_, _, msg]] = server.wait_for(1)

    row = json.loads(msg)
    assert (row["id"], row["track"]) == (row_id, track)


def test_tls_with_the_ca_of_the_sinks_file(relay_app, sinks_file, tmp_path):
    ids = [write(relay_app) for _ in range(4)]
    with rsyslog(tmp_path / "rsyslog", tls=True) as server:
        write_sinks(sinks_file, syslog_sink(server, tls=True, ca_file=str(server.ca_file)))
        result = relay_once(relay_app)
        received = server.wait_for(4)

    assert result.exit_code == 0, result.output
    assert [json.loads(msg)["id"] for _, _, msg in received] == ids


def test_tls_refuses_a_server_its_ca_did_not_sign(relay_app, sinks_file, tmp_path):
    write(relay_app)
    with rsyslog(tmp_path / "rsyslog", tls=True) as server:
        write_sinks(sinks_file, syslog_sink(server, tls=True))  # the system's CAs only
        result = relay_once(relay_app, "--max-backoff", "0.1")

        assert server.lines() == []
    assert result.exit_code == 1
    assert "not caught up: siem" in result.output


def test_rows_reach_rsyslog_after_it_comes_back(relay_app, sinks_file, tmp_path):
    first = [write(relay_app) for _ in range(2)]
    with rsyslog(tmp_path / "rsyslog") as server:
        write_sinks(sinks_file, syslog_sink(server))
        relay_once(relay_app)
        server.wait_for(2)
        server.stop()
        second = [write(relay_app) for _ in range(3)]
        down = relay_once(relay_app, "--max-backoff", "0.1")
        server.start()
        relay_once(relay_app)
        received = server.wait_for(5)

    assert down.exit_code == 1
    assert [json.loads(msg)["id"] for _, _, msg in received] == first + second


def test_message_has_octet_count_priority_and_header():
    row = {
        "id": 7,
        "created_at": "2026-11-21T10:00:00.123456Z",
        "event_id": "e",
        "event": "login failure",
        "level": "WARNING",
        "hash": "ab",
    }
    line = json.dumps(row)
    # As the relay reads it: the id, the JSON line, and the header's fields beside it.
    framed = message((7, line, *(row[name] for name in FIELDS)), facility=13)

    count, _, text = framed.partition(b" ")
    assert int(count) == len(text)
    assert text.startswith(b"<108>1 2026-11-21T10:00:00.123456Z ")  # 13 * 8 + warning (4)
    assert b" flask-audit-trail - login_failure [audit@32473 " in text
