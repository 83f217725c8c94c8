"""What a client sends becomes text every database stores: each string cut to its column, and
headers read as the UTF-8 they were sent in (WSGI hands them over decoded as Latin-1)."""

import pytest

from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.models import Log
from tests.conftest import wsgi_header
from tests.helpers import spooled_events

# Each bounded text column of the trail and its length, as the schema declares them.
BOUNDED = {
    "source": 8,
    "event": 64,
    "level": 8,
    "user": 64,
    "ip": 45,
    "method": 16,
    "path": 2048,
    "request_id": 32,
    "user_agent": 512,
}


def test_the_bounds_are_the_columns_lengths():
    assert {name: Log.__table__.columns[name].type.length for name in BOUNDED} == BOUNDED


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_string_longer_than_its_column_is_stored_cut_to_the_column(app, api, client, name):
    fields = {"source": "app", "event": "test.long", "level": "INFO", "track": "long"}
    fields[name] = "é" * (BOUNDED[name] + 20)  # characters, not bytes: varchar(n) counts those
    with app.app_context():
        writer().write(AuditEvent(**fields))
    [row] = api.rows()
    assert getattr(row, name) == "é" * BOUNDED[name]
    assert spooled_events(client) == 0


def test_a_utf8_user_agent_is_stored_as_the_text_sent(api, client):
    client.get("/", environ_base={"HTTP_USER_AGENT": wsgi_header("Navigateur/1.0 (Zürich ☃)")})
    [row] = api.rows(event="index.view")
    assert row.user_agent == "Navigateur/1.0 (Zürich ☃)"


def test_a_user_agent_that_is_not_utf8_is_stored_with_replacement_characters(api, client):
    client.get("/", environ_base={"HTTP_USER_AGENT": b"bad \xff\xfe end".decode("latin-1")})
    [row] = api.rows(event="index.view")
    assert row.user_agent == "bad \N{REPLACEMENT CHARACTER}\N{REPLACEMENT CHARACTER} end"


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_a_utf8_forwarded_value_is_quoted_as_the_text_sent(api, client):
    client.get(
        "/", headers={"X-Forwarded-For": wsgi_header("☃")}, environ_base={"REMOTE_ADDR": "10.0.0.2"}
    )
    [row] = api.rows(event="index.view")
    assert (row.ip, row.track) == (None, 'GET / [client address is not an IP address: "\\u2603"]')
