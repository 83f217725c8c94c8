"""A password change shuts out everyone who knows only the old password, however their logins
interleave with it (issue "What an outside attacker found", finding 1).

The change stamps its time, hashes the new password (tens of milliseconds), then commits; a
login that read the old hash in that window must not get a token that outlives the change.
"""

import threading
from datetime import timedelta

import pytest

from backend.clock import moved
from tests.conftest import ALICE, basic, bearer
from tests.helpers import NEW_PASSWORD, NO_LOCKOUT, change_password, login_racing

ROUNDS = 5
# As many as a process checks passwords at once (credentials.CHECKS_AT_ONCE): none waits for
# a turn, so each begins its next login at once, inside the change's window. More would wait
# with their logins begun earlier, before the change, and hide the race.
ATTACKERS = 2


def test_a_login_that_read_the_old_password_is_refused_when_the_change_began_first(
    api, client, users, monkeypatch
):
    """The bad interleaving, forced: the change stamps its time before the login begins (its
    hash is slow, or its machine's clock is behind) and commits after the login read the old
    password hash."""

    def change_stamped_before_the_login_began():
        with moved(-timedelta(seconds=1)):
            assert change_password(client, users["alice"], ALICE[1]).status_code == 200

    raced = login_racing(client, monkeypatch, change_stamped_before_the_login_began)
    assert raced.status_code == 401
    [failure] = api.rows(event="login.failure")
    assert (failure.user, failure.status, failure.track) == (
        "alice",
        401,
        "password changed or user disabled during the login",
    )


@pytest.mark.settings(**NO_LOCKOUT)
def test_no_token_made_with_the_old_password_outlives_a_change_made_while_others_log_in(
    app, api, users
):
    """Attackers who know the old password log in over and over while the owner changes it;
    afterwards not one token they were given still works, in any of ROUNDS rounds."""
    password, surviving = ALICE[1], []  # per round: the attackers' tokens that still work
    for round_number in range(ROUNDS):
        new_password = f"alice-round-{round_number}-password"
        owner_token = api.login("alice", password)
        tokens = attack_during_change(app, owner_token, password, new_password)
        surviving.append(sum(api.get("/v1/me", t).status_code != 401 for t in tokens))
        password = new_password
    assert surviving == [0] * ROUNDS


def attack_during_change(app, owner_token: str, old: str, new: str) -> list[str]:
    """Change alice's password from `old` to `new` while ATTACKERS threads log in with `old`
    until refused; return every token they got."""
    tokens, started = [], threading.Barrier(ATTACKERS + 1)

    def attacker():
        client = app.test_client()
        started.wait()
        while (response := client.post("/login", headers=basic("alice", old))).status_code == 200:
            tokens.append(response.get_json()["token"])

    threads = [threading.Thread(target=attacker) for _ in range(ATTACKERS)]
    for thread in threads:
        thread.start()
    started.wait()
    changed = app.test_client().put(
        "/v1/me/password",
        headers=bearer(owner_token),
        json={"current_password": old, "new_password": new},
    )
    for thread in threads:
        thread.join(timeout=60)
    assert changed.status_code == 200
    return tokens


def test_a_login_with_the_new_password_begun_before_the_change_gets_a_live_token(
    api, client, users, monkeypatch
):
    """The change commits after the login began and before it read the user: the login checks
    the new password, and its token must work (it must not be dated from before the change)."""
    from backend.auth import credentials

    lock = credentials.Throttle.lock

    def change_then_lock(throttle):
        monkeypatch.undo()  # once: the change's own password check takes a lock too
        assert change_password(client, users["alice"], ALICE[1]).status_code == 200
        return lock(throttle)

    monkeypatch.setattr(credentials.Throttle, "lock", change_then_lock)
    response = client.post("/login", headers=basic(ALICE[0], NEW_PASSWORD))
    assert response.status_code == 200
    assert client.get("/v1/me", headers=bearer(response.get_json()["token"])).status_code == 200
