"""The client's address: what the socket says, or what exactly TRUSTED_PROXY_HOPS proxies say.

`REMOTE_ADDR` plays the socket's peer; `X-Forwarded-For` is what the client wrote, followed by
what each proxy appended.
"""

import pytest

from tests.conftest import ALICE, wsgi_header
from tests.helpers import WRONG, assert_locked, attempt

CLIENT = "203.0.113.9"
PROXY = "10.0.0.2"
SPOOFED = "198.51.100.66"


def login_failure_from(client, peer: str, forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return attempt(client, ALICE[0], WRONG, address=peer, headers=headers)


@pytest.mark.parametrize(
    ("peer", "forwarded_for"),
    [
        pytest.param(CLIENT, SPOOFED, id="no-proxy"),
        pytest.param(
            PROXY,
            f"{SPOOFED}, {CLIENT}",
            id="one-proxy",
            marks=pytest.mark.settings(TRUSTED_PROXY_HOPS="1"),
        ),
        pytest.param(
            PROXY,
            f"{SPOOFED}, {CLIENT}, 10.0.0.1",
            id="two-proxies",
            marks=pytest.mark.settings(TRUSTED_PROXY_HOPS="2"),
        ),
    ],
)
def test_the_logged_address_is_the_one_the_trusted_proxies_saw(api, client, peer, forwarded_for):
    response = login_failure_from(client, peer, forwarded_for)
    [row] = api.rows(event="login.failure")
    assert row.ip == CLIENT
    assert row.request_id == response.headers["X-Request-ID"]


@pytest.mark.usefixtures("stopped_clock")  # Retry-After to the second
def test_without_proxies_a_client_cannot_dodge_the_lock_by_rotating_x_forwarded_for(client):
    for number in range(5):
        login_failure_from(client, CLIENT, f"198.51.100.{number}")
    assert_locked(
        attempt(client, *ALICE, address=CLIENT, headers={"X-Forwarded-For": "198.51.100.99"}), 60
    )


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_behind_one_proxy_api_requests_are_logged_from_the_appended_address(api, client):
    client.get(
        "/v1/me",
        headers={"X-Forwarded-For": f"{SPOOFED}, {CLIENT}"},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    [row] = api.rows(event="api.request")
    assert row.ip == CLIENT


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
@pytest.mark.usefixtures("stopped_clock")  # Retry-After to the second
def test_behind_a_proxy_the_lock_follows_the_appended_address(api, client):
    api.create_user(*ALICE)
    for number in range(5):
        login_failure_from(client, PROXY, f"198.51.100.{number}, {CLIENT}")
    locked = attempt(
        client, *ALICE, address=PROXY, headers={"X-Forwarded-For": f"198.51.100.99, {CLIENT}"}
    )
    assert_locked(locked, 60)
    # Another client behind the same proxy is not caught by that lock.
    assert (
        attempt(
            client, *ALICE, address=PROXY, headers={"X-Forwarded-For": "192.0.2.44"}
        ).status_code
        == 200
    )


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_the_locked_row_carries_the_appended_address(api, client):
    for _ in range(6):
        login_failure_from(client, PROXY, f"{SPOOFED}, {CLIENT}")
    [row] = api.rows(event="login.locked")
    assert row.ip == CLIENT


# A value a trusted proxy passed on from a client that wrote its own last entry: 60 characters,
# longer than any address (the `ip` column's 45).
NOT_AN_ADDRESS = "not-an-address;" + "x" * 45


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_a_forwarded_value_that_is_not_an_address_is_recorded_with_a_null_ip(api, client):
    response = login_failure_from(client, PROXY, NOT_AN_ADDRESS)
    [row] = api.rows(event="login.failure")
    assert (row.ip, row.request_id) == (None, response.headers["X-Request-ID"])


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_a_forwarded_value_that_is_not_an_address_is_quoted_in_the_track(api, client):
    """As a JSON string: a backslash, a control or a non-ASCII character escaped."""
    login_failure_from(client, PROXY, wsgi_header(f"{CLIENT}, {NOT_AN_ADDRESS}\\\x7fé"))
    [row] = api.rows(event="login.failure")
    assert row.track == (
        f'unknown user [client address is not an IP address: "{NOT_AN_ADDRESS}\\\\\\u007f\\u00e9"]'
    )


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_the_quoted_value_is_bounded(api, client):
    login_failure_from(client, PROXY, "y" * 5000)
    [row] = api.rows(event="login.failure")
    assert row.track == f'unknown user [client address is not an IP address: "{"y" * 100}"]'


@pytest.mark.settings(TRUSTED_PROXY_HOPS="1")
def test_a_forwarded_ipv6_address_is_recorded(api, client):
    login_failure_from(client, PROXY, "2001:db8::1")
    [row] = api.rows(event="login.failure")
    assert (row.ip, row.track) == ("2001:db8::1", "unknown user")
