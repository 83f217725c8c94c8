"""The sinks file: a bad one stops `flask audit relay` with one line naming the sink and key."""

import pytest

from backend.relay.config import SinksFileError, load_sinks
from tests.relaying import relay_once, write_sinks

FILE_SINK = {"name": "archive", "kind": "file", "path": "/tmp/x.ndjson"}


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"name": "s", "kind": "carrier-pigeon"}, 'sink "s": key "kind": must be one of'),
        ({"name": "s", "kind": "syslog"}, 'sink "s": key "address": is required'),
        ({"name": "s", "kind": "syslog", "address": "nohost"}, 'key "address": must be'),
        ({**FILE_SINK, "levles": ["ERROR"]}, 'sink "archive": key "levles": unknown'),
        ({**FILE_SINK, "levels": ["LOUD"]}, 'key "levels": levels are DEBUG'),
        ({**FILE_SINK, "levels": "ERROR"}, 'key "levels": must be a non-empty list'),
        ({**FILE_SINK, "outcomes": ["won"]}, 'key "outcomes": outcomes are success'),
        ({**FILE_SINK, "sources": ["web"]}, 'key "sources": sources are auth'),
        ({**FILE_SINK, "batch_size": 0}, 'key "batch_size": must be a whole number'),
        ({"kind": "file", "path": "/x"}, 'sink #1: key "name": a text'),
        ({"name": "h", "kind": "webhook", "url": "ftp://x", "secret": "s"}, 'key "url"'),
        ({"name": "h", "kind": "webhook", "url": "http://x/"}, 'key "secret": is required'),
    ],
)
def test_a_bad_sink_is_named_with_its_key(tmp_path, sink, message):
    path = write_sinks(tmp_path / "sinks.toml", sink)

    with pytest.raises(SinksFileError) as raised:
        load_sinks(path)

    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_two_sinks_of_one_name_are_refused(tmp_path):
    path = write_sinks(tmp_path / "sinks.toml", FILE_SINK, FILE_SINK)

    with pytest.raises(SinksFileError, match='sink "archive": key "name": used twice'):
        load_sinks(path)


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    path = tmp_path / "sinks.toml"
    path.write_text("[[sink]\nname = ")

    with pytest.raises(SinksFileError, match="not TOML"):
        load_sinks(path)


def test_relay_exits_1_with_the_one_line_error(relay_app, sinks_file):
    write_sinks(sinks_file, {**FILE_SINK, "levels": ["LOUD"]})

    result = relay_once(relay_app)

    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: ")
    assert 'sink "archive": key "levels"' in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_relay_without_sinks_file_says_so(relay_app, sinks_file):
    sinks_file.write_text("")

    result = relay_once(relay_app)

    assert result.exit_code == 1
    assert "names no sink" in result.output


def test_filters_and_defaults_are_read(tmp_path):
    path = write_sinks(
        tmp_path / "sinks.toml",
        {
            "name": "siem",
            "kind": "syslog",
            "address": "127.0.0.1:6514",
            "levels": ["WARNING", "ERROR"],
        },
    )

    [sink] = load_sinks(path)

    assert sink.filters == {"level": ("WARNING", "ERROR")}
    assert sink.settings["host"] == "127.0.0.1"
    assert sink.settings["port"] == 6514
    assert sink.settings["tls"] is False
    assert sink.batch_size == 1000
