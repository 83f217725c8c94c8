"""Brute-force protection: the (account, address) pair, the address and the account locks.

Defaults: 5 failures lock a pair, 20 an address, 20 an account; a lock lasts 60 s, doubling
per further lock of a pair or address up to 3600 s, never for an account; failures are
forgotten after 900 s without a failure or a lock, locks after 3600 s.
"""

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from backend.auth import credentials
from backend.clock import moved
from backend.extensions import db
from backend.models import LoginThrottle
from tests.conftest import ALICE, BOB, bearer
from tests.helpers import ATTACKER, WRONG, assert_locked, attempt, same_headers

OWNER = "198.51.100.7"
# Each lock's Retry-After is asserted to the second: counted from a clock that only `moved`
# moves, however slowly the machine answers the requests before.
pytestmark = pytest.mark.usefixtures("stopped_clock")


def fail(client, times: int, username: str = ALICE[0], address: str = ATTACKER) -> None:
    """`times` wrong passwords, each a plain 401 (no lock yet)."""
    for _ in range(times):
        assert attempt(client, username, WRONG, address).status_code == 401


def login_after(client, first: int, apart: timedelta, then: int):
    """`first` wrong passwords, `then` more `apart` later, and then alice's right one at that
    time; its response."""
    fail(client, first)
    with moved(apart):
        fail(client, then)
        return attempt(client, *ALICE)


@pytest.fixture
def alice(api):
    api.create_user(*ALICE)


def test_five_failures_lock_the_pair_with_429_and_retry_after(client, alice):
    fail(client, 5)
    assert_locked(attempt(client, *ALICE), 60)


def test_a_locked_attempt_leaves_a_login_locked_row_and_is_not_checked(api, client, alice):
    fail(client, 5)
    response = attempt(client, *ALICE, headers={"User-Agent": "hydra"})
    [row] = api.rows(event="login.locked")
    assert (row.source, row.level, row.user, row.ip, row.status, row.user_agent) == (
        "auth",
        "WARNING",
        "alice",
        ATTACKER,
        429,
        "hydra",
    )
    assert row.request_id == response.headers["X-Request-ID"]
    assert row.track == "locked out for 60 s: this account from this address"
    assert len(api.rows(event="login.failure")) == 5 and api.rows(event="login.success") == []


def test_the_owner_logs_in_from_another_address_while_the_pair_is_locked(client, alice):
    fail(client, 5)
    assert attempt(client, *ALICE, address=OWNER).status_code == 200


def test_the_pair_lock_lifts_after_the_cooloff(client, alice):
    fail(client, 5)
    with moved(timedelta(seconds=59)):
        assert_locked(attempt(client, *ALICE), 1)
    with moved(timedelta(seconds=61)):
        assert attempt(client, *ALICE).status_code == 200


def test_the_cooloff_doubles_with_each_further_lock(client, alice):
    elapsed = timedelta(0)
    for cooloff in (60, 120, 240, 480):
        with moved(elapsed):
            fail(client, 5)
            assert_locked(attempt(client, *ALICE), cooloff)
        elapsed += timedelta(seconds=cooloff + 1)


@pytest.mark.settings(LOGIN_COOLOFF="60", LOGIN_COOLOFF_MAX="100")
def test_the_cooloff_stops_at_its_maximum(client, alice):
    assert_locked(login_after(client, 5, timedelta(seconds=61), 5), 100)


def test_failures_are_forgotten_after_a_quiet_window(client, alice):
    assert login_after(client, 4, timedelta(seconds=900), 4).status_code == 200


def test_failures_within_the_window_add_up(client, alice):
    assert_locked(login_after(client, 4, timedelta(seconds=899), 1), 60)


def test_waiting_out_a_window_does_not_reset_the_escalation(client, alice):
    assert_locked(login_after(client, 5, timedelta(seconds=60 + 900), 5), 120)


@pytest.mark.parametrize("known", [False, True], ids=["new-address", "known-address"])
def test_escalation_is_forgotten_after_the_longest_cooloff_without_failures(client, alice, known):
    if known:  # the pair's row then outlives its failures: it remembers the address
        assert attempt(client, *ALICE).status_code == 200
    assert_locked(login_after(client, 5, timedelta(seconds=60 + 3600), 5), 60)


def test_counters_that_stopped_mattering_are_deleted(app, client, alice):
    for number in range(3):
        fail(client, 1, username=f"user{number}", address=f"192.0.2.{number}")
    with moved(timedelta(seconds=3600)):
        fail(client, 1, username="user9", address="192.0.2.9")
    with app.app_context():
        rows = db.session.scalars(sa.select(LoginThrottle)).all()
    assert len(rows) == 3  # the last failure's pair, address and account


def test_a_success_resets_the_pair(client, alice):
    fail(client, 4)
    assert attempt(client, *ALICE).status_code == 200
    fail(client, 4)
    assert attempt(client, *ALICE).status_code == 200


@pytest.mark.settings(LOGIN_MAX_FAILURES_PER_ACCOUNT="4")
def test_a_success_resets_the_accounts_counter(client, alice):
    for number in range(3):
        fail(client, 1, address=f"192.0.2.{number}")
    assert attempt(client, *ALICE, address=OWNER).status_code == 200
    for number in range(3):
        fail(client, 1, address=f"192.0.2.{number}")
    assert attempt(client, *ALICE, address="192.0.2.200").status_code == 200


def test_one_address_trying_many_accounts_is_locked_for_all_of_them(client, alice):
    for number in range(20):
        fail(client, 1, username=f"user{number}")
    assert_locked(attempt(client, *ALICE), 60)
    assert attempt(client, *ALICE, address=OWNER).status_code == 200


@pytest.mark.settings(LOGIN_MAX_FAILURES_PER_ADDRESS="4")
def test_a_success_does_not_reset_the_address(api, client, alice):
    api.create_user(*BOB)
    for number in range(3):
        fail(client, 1, username=f"user{number}")
    assert attempt(client, *BOB).status_code == 200  # the attacker's own account
    fail(client, 1, username="user3")
    assert_locked(attempt(client, *BOB), 60)


@pytest.mark.settings(LOGIN_MAX_FAILURES_PER_ACCOUNT="4")
def test_many_addresses_on_one_account_lock_it_briefly_and_never_longer(client, alice):
    for round_number in range(3):
        with moved(timedelta(seconds=61 * round_number)):
            for number in range(4):
                fail(client, 1, address=f"192.0.{round_number}.{number}")
            assert_locked(attempt(client, *ALICE, address=OWNER), 60)
    with moved(timedelta(seconds=61 * 3)):
        assert attempt(client, *ALICE, address=OWNER).status_code == 200


def test_the_account_lock_spares_an_address_the_owner_logged_in_from(client, alice):
    assert attempt(client, *ALICE, address=OWNER).status_code == 200
    for number in range(20):
        fail(client, 1, address=f"192.0.2.{number}")
    assert_locked(attempt(client, *ALICE, address="198.51.100.200"), 60)
    assert attempt(client, *ALICE, address=OWNER).status_code == 200


@pytest.mark.settings(LOGIN_KNOWN_ADDRESS_TTL="3600", LOGIN_MAX_FAILURES_PER_ACCOUNT="4")
def test_an_address_is_known_for_a_limited_time(client, alice):
    assert attempt(client, *ALICE, address=OWNER).status_code == 200
    with moved(timedelta(seconds=3601)):
        for number in range(4):
            fail(client, 1, address=f"192.0.2.{number}")
        assert_locked(attempt(client, *ALICE, address=OWNER), 60)


def test_unknown_names_are_locked_like_real_ones(client, alice):
    fail(client, 5, username="mallory", address=OWNER)
    fail(client, 5)
    unknown, known = attempt(client, "mallory", WRONG, OWNER), attempt(client, "alice", WRONG)
    assert_locked(unknown, 60)
    assert_locked(known, 60)
    assert same_headers(unknown) == same_headers(known)


@pytest.mark.settings(LOGIN_MAX_FAILURES="2", LOGIN_COOLOFF="5", LOGIN_COOLOFF_MAX="5")
def test_thresholds_and_cooloffs_are_configuration(client, alice):
    fail(client, 2)
    assert_locked(attempt(client, *ALICE), 5)


def test_the_default_thresholds_are_well_under_nists_ceiling():
    settings = config.settings({"APP_ENV": "testing", "SECRET_KEY": "x", "INSTANCE_PATH": "/tmp"})
    thresholds = [
        settings[name]
        for name in (
            "LOGIN_MAX_FAILURES",
            "LOGIN_MAX_FAILURES_PER_ADDRESS",
            "LOGIN_MAX_FAILURES_PER_ACCOUNT",
        )
    ]
    assert thresholds == [5, 20, 20]
    assert (settings["LOGIN_WINDOW"], settings["LOGIN_COOLOFF"], settings["LOGIN_COOLOFF_MAX"]) == (
        900,
        60,
        3600,
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LOGIN_MAX_FAILURES": "0"}, "LOGIN_MAX_FAILURES must be at least 1, not 0"),
        ({"LOGIN_WINDOW": "soon"}, "LOGIN_WINDOW must be a whole number, not 'soon'"),
        (
            {"LOGIN_COOLOFF": "600", "LOGIN_COOLOFF_MAX": "60"},
            "LOGIN_COOLOFF must not exceed LOGIN_COOLOFF_MAX",
        ),
    ],
)
def test_bad_lockout_settings_stop_the_start(environ, message):
    with pytest.raises(config.ConfigError, match=message):
        config.settings(
            {"APP_ENV": "testing", "SECRET_KEY": "x", "INSTANCE_PATH": "/tmp", **environ}
        )


def wrong_passwords_at_once(app, count: int) -> list[int]:
    """The statuses of `count` logins of alice with a wrong password, sent at the same moment
    from as many threads."""
    barrier = threading.Barrier(count)
    statuses = []

    def one_failure():
        client = app.test_client()
        barrier.wait()
        statuses.append(attempt(client, ALICE[0], WRONG).status_code)

    threads = [threading.Thread(target=one_failure) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.settings(LOGIN_MAX_FAILURES="8")
def test_concurrent_failures_are_all_counted(app, alice):
    assert wrong_passwords_at_once(app, 8) == [401] * 8
    assert_locked(attempt(app.test_client(), *ALICE), 60)


@pytest.mark.settings(LOGIN_MAX_FAILURES="3")
def test_guesses_sent_all_at_once_cannot_all_pass_the_lockout_check(app, alice):
    """Twelve wrong passwords at once against a lock at three failures: a process checks
    CHECKS_AT_ONCE (2) passwords at a time, each counted before the next one is let in, so
    only one guess beyond the three is checked, and the others are refused with 429 unchecked.
    (Without the bound, all twelve passed the check before the first failure was counted.)"""
    statuses = wrong_passwords_at_once(app, 12)
    assert 3 <= statuses.count(401) <= 3 + credentials.CHECKS_AT_ONCE - 1
    assert statuses.count(401) + statuses.count(429) == 12


def test_wrong_current_passwords_count_toward_the_same_lock(api, client, alice):
    token = api.login(*ALICE)  # from 127.0.0.1, the address of the calls below
    change = {"current_password": WRONG, "new_password": "a-new-password-1"}
    for _ in range(5):
        assert client.put("/v1/me/password", json=change, headers=bearer(token)).status_code == 403
    locked = client.put(
        "/v1/me/password", json={**change, "current_password": ALICE[1]}, headers=bearer(token)
    )
    assert_locked(locked, 60)
    assert_locked(attempt(client, *ALICE, address="127.0.0.1"), 60)
    assert len(api.rows(event="password.change.failure")) == 5
    [row] = api.rows(event="password.change.locked")
    assert (row.source, row.level, row.user, row.status) == ("v1", "WARNING", "alice", 429)
