"""No enumeration; passwords and tokens: the KDF, its upgrade, token digests, expiry, and
revocation when a user is disabled or changes password."""

import hashlib
import re
import statistics
import threading
import time
from base64 import urlsafe_b64decode
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from backend.clock import moved
from backend.extensions import db
from backend.models import Token, User
from tests.conftest import ADMIN, ALICE, basic, bearer
from tests.hashing import CountingHasher
from tests.helpers import (
    NEW_PASSWORD,
    NO_LOCKOUT,
    assert_error,
    change_password,
    login_racing,
    same_headers,
)

TRIALS = 30


def stored(app, model, **where):
    """The rows of `model` matching `where`, detached."""
    with app.app_context():
        rows = db.session.scalars(sa.select(model).filter_by(**where)).all()
        db.session.expunge_all()
        return rows


def user_id(app, username: str) -> int:
    [user] = stored(app, User, username=username)
    return user.id


def disable(api, admin_token: str, uid: int, disabled: bool = True):
    return api.client.patch(
        f"/v1/users/{uid}", json={"disabled": disabled}, headers=bearer(admin_token)
    )


# --- no enumeration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "send",
    [
        lambda client, name, password: client.post("/login", headers=basic(name, password)),
        lambda client, name, password: client.post(
            "/login", json={"username": name, "password": password}
        ),
    ],
    ids=["basic", "json"],
)
def test_unknown_user_and_wrong_password_get_the_same_status_body_and_headers(api, client, send):
    api.create_user(*ALICE)
    wrong_password = send(client, "alice", "not-her-password")
    unknown_user = send(client, "mallory", "not-her-password")
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.data == unknown_user.data
    assert same_headers(wrong_password) == same_headers(unknown_user)


def test_a_disabled_user_gets_the_same_answer_as_a_wrong_password(api, client, users):
    disable(api, users["admin"], user_id(api.app, "alice"))
    disabled = client.post("/login", headers=basic(*ALICE))
    wrong_password = client.post("/login", headers=basic("bob", "not-his-password"))
    assert disabled.status_code == wrong_password.status_code == 401
    assert disabled.data == wrong_password.data
    assert same_headers(disabled) == same_headers(wrong_password)
    assert api.rows(event="login.failure")[-2].track == "disabled user"


@pytest.mark.settings(**NO_LOCKOUT)
def test_unknown_user_and_wrong_password_take_the_same_time(api, client):
    """Medians of interleaved trials; without the dummy hash an unknown user answers in a
    fraction of the time (the ratio drops far below the bound), with it they match."""
    api.create_user(*ALICE)

    def seconds(username: str) -> float:
        start = time.perf_counter()
        response = client.post("/login", headers=basic(username, "not-her-password"))
        elapsed = time.perf_counter() - start
        assert response.status_code == 401
        return elapsed

    seconds("alice"), seconds("mallory")  # warm-up: connections, caches
    wrong_password, unknown_user = [], []
    for _ in range(TRIALS):
        wrong_password.append(seconds("alice"))
        unknown_user.append(seconds("mallory"))
    ratio = statistics.median(unknown_user) / statistics.median(wrong_password)
    print(
        f"median wrong password {statistics.median(wrong_password) * 1000:.1f} ms, "
        f"unknown user {statistics.median(unknown_user) * 1000:.1f} ms, ratio {ratio:.2f}"
    )
    assert 1 / 1.5 < ratio < 1.5  # generous: a shared 2-core machine is noisy


# --- passwords ---------------------------------------------------------------------------

ARGON2 = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


def test_passwords_are_stored_with_argon2id_at_owasp_strength(api, client):
    api.create_user(*ADMIN, is_admin=True)
    admin_token = api.login(*ADMIN)
    assert (
        api.post(
            "/v1/users", admin_token, json={"username": "alice", "password": ALICE[1]}
        ).status_code
        == 201
    )
    [alice] = stored(api.app, User, username="alice")
    memory_kib, time_cost, _ = map(int, ARGON2.match(alice.password_hash).groups())
    assert memory_kib >= 19 * 1024 and time_cost >= 2
    assert ALICE[1] not in alice.password_hash


def alice_with_an_old_hash(api) -> str:
    """Alice, her password hashed with weaker parameters than today's; return that hash."""
    api.create_user(*ALICE)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(ALICE[1])
    with api.app.app_context():
        db.session.execute(sa.update(User).values(password_hash=weak))
        db.session.commit()
    return weak


def test_a_hash_with_older_parameters_is_upgraded_at_login(api, client):
    alice_with_an_old_hash(api)
    api.login(*ALICE)
    [alice] = stored(api.app, User, username="alice")
    assert ARGON2.match(alice.password_hash).groups() == ("19456", "2", "1")
    assert api.login(*ALICE)


def test_an_upgrade_never_undoes_a_password_change_made_during_the_login(api, client, monkeypatch):
    """The old password is checked against the hash read before; if the password changes
    while that check runs, the upgrade must not write the old password's hash back."""
    from backend.auth import credentials

    alice_with_an_old_hash(api)
    changed = PasswordHasher().hash(NEW_PASSWORD)
    real = credentials.check_password

    def changed_meanwhile(*args) -> bool:
        with db.engine.begin() as connection:  # another request, on a connection of its own
            connection.execute(sa.update(User).values(password_hash=changed))
        return real(*args)

    monkeypatch.setattr(credentials, "check_password", changed_meanwhile)
    # The old password no longer logs in either (test_password_change_race.py).
    assert client.post("/login", headers=basic(*ALICE)).status_code == 401
    [alice] = stored(api.app, User, username="alice")
    assert alice.password_hash == changed


def test_a_failed_login_leaves_an_old_hash_alone(api, client):
    weak = alice_with_an_old_hash(api)
    client.post("/login", headers=basic("alice", "not-her-password"))
    [alice] = stored(api.app, User, username="alice")
    assert alice.password_hash == weak


# --- tokens ------------------------------------------------------------------------------


def test_tokens_carry_at_least_128_random_bits_and_only_their_digest_is_stored(api):
    api.create_user(*ALICE)
    tokens = [api.login(*ALICE) for _ in range(3)]
    assert len(set(tokens)) == 3
    for token in tokens:
        assert len(urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128
    rows = stored(api.app, Token)
    assert sorted(row.digest for row in rows) == sorted(
        hashlib.sha256(token.encode()).hexdigest() for token in tokens
    )
    dumped = repr([row.__dict__ for row in rows])
    assert not any(token in dumped for token in tokens)


@pytest.mark.settings(TOKEN_TTL="60")
def test_a_token_expires_after_token_ttl(api):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    with moved(timedelta(seconds=59)):
        assert api.get("/v1/me", token).status_code == 200
    with moved(timedelta(seconds=60)):
        response = api.get("/v1/me", token)
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers


# --- disabling a user --------------------------------------------------------------------


def test_disabling_a_user_revokes_every_token_of_theirs(api, users):
    second = api.login(*ALICE)
    response = disable(api, users["admin"], user_id(api.app, "alice"))
    assert response.status_code == 200
    body = response.get_json()
    assert (body["username"], body["disabled"]) == ("alice", True)
    for token in (users["alice"], second):
        assert api.get("/v1/me", token).status_code == 401
    assert all(
        token.revoked_at is not None
        for token in stored(api.app, Token, user_id=user_id(api.app, "alice"))
    )
    assert api.get("/v1/me", users["bob"]).status_code == 200


def test_disabling_a_user_leaves_a_row(api, users):
    disable(api, users["admin"], user_id(api.app, "alice"))
    [row] = api.rows(event="user.disable")
    assert (row.source, row.level, row.user, row.status) == ("v1", "INFO", "admin", 200)
    assert row.track == "disabled user alice; tokens revoked: 1"


def test_an_enabled_user_logs_in_again_but_old_tokens_stay_dead(api, users):
    uid = user_id(api.app, "alice")
    disable(api, users["admin"], uid)
    response = disable(api, users["admin"], uid, disabled=False)
    assert response.status_code == 200 and response.get_json()["disabled"] is False
    assert api.get("/v1/me", api.login(*ALICE)).status_code == 200
    assert api.get("/v1/me", users["alice"]).status_code == 401
    [row] = api.rows(event="user.enable")
    assert row.track == "enabled user alice"


def test_an_admin_cannot_disable_themselves(api, users):
    # A valid request that a rule refuses: 403, not the 400 of a malformed one.
    response = disable(api, users["admin"], user_id(api.app, "admin"))
    assert assert_error(response, 403)["message"] == "You cannot disable yourself."
    assert api.get("/v1/me", users["admin"]).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "disabled"),
        ({"disabled": "maybe"}, "disabled"),
        ({"disabled": 0}, "disabled"),
        ({"disabled": "true"}, "disabled"),
        ({"disabled": None}, "disabled"),
        ({"disabled": True, "is_admin": True}, "is_admin"),
    ],
)
def test_a_bad_update_is_400_naming_the_field(api, users, body, field):
    response = api.client.patch(
        f"/v1/users/{user_id(api.app, 'alice')}", json=body, headers=bearer(users["admin"])
    )
    assert_error(response, 400, details={field})


def test_updating_a_user_that_does_not_exist_is_404(api, users):
    assert disable(api, users["admin"], 999).status_code == 404


# --- changing a password -----------------------------------------------------------------


def test_changing_the_password_revokes_every_token_and_the_new_one_works(api, client, users):
    second = api.login(*ALICE)
    response = change_password(client, users["alice"], ALICE[1])
    assert response.status_code == 200
    assert response.get_json() == {"message": "Password changed; log in again."}
    for token in (users["alice"], second):
        assert api.get("/v1/me", token).status_code == 401
    assert client.post("/login", headers=basic(*ALICE)).status_code == 401
    assert api.get("/v1/me", api.login("alice", NEW_PASSWORD)).status_code == 200
    assert api.get("/v1/me", users["bob"]).status_code == 200


def test_changing_the_password_leaves_a_row(api, client, users):
    change_password(client, users["alice"], ALICE[1])
    [row] = api.rows(event="password.change")
    assert (row.source, row.level, row.user, row.status) == ("v1", "INFO", "alice", 200)
    assert row.track == "changed password; tokens revoked: 1"


def test_a_wrong_current_password_is_403_and_changes_nothing(api, client, users):
    response = change_password(client, users["alice"], "not-her-password")
    assert response.status_code == 403
    assert api.get("/v1/me", users["alice"]).status_code == 200
    assert api.login(*ALICE)
    [row] = api.rows(event="password.change.failure")
    assert (row.level, row.user, row.status, row.track) == (
        "WARNING",
        "alice",
        403,
        "invalid password",
    )


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"current_password": ALICE[1], "new_password": "short"}, {"new_password"}),
        ({"new_password": NEW_PASSWORD}, {"current_password"}),
        ({"current_password": ALICE[1], "new_password": NEW_PASSWORD, "extra": 1}, {"extra"}),
    ],
)
def test_a_bad_password_change_is_400_naming_the_fields(client, users, body, fields):
    response = client.put("/v1/me/password", json=body, headers=bearer(users["alice"]))
    assert_error(response, 400, details=fields)


def test_a_login_racing_a_password_change_is_refused(api, client, users, monkeypatch):
    raced = login_racing(
        client, monkeypatch, lambda: change_password(client, users["alice"], ALICE[1])
    )
    wrong_password = client.post("/login", headers=basic("bob", "not-his-password"))
    assert raced.status_code == wrong_password.status_code == 401
    assert raced.data == wrong_password.data
    assert same_headers(raced) == same_headers(wrong_password)
    assert api.get("/v1/me", api.login("alice", NEW_PASSWORD)).status_code == 200


def test_a_login_racing_a_disable_is_refused(api, client, users, monkeypatch):
    uid = user_id(api.app, "alice")
    raced = login_racing(client, monkeypatch, lambda: disable(api, users["admin"], uid))
    assert raced.status_code == 401
    assert stored(api.app, Token, user_id=uid, revoked_at=None) == []


def test_the_openapi_document_tells_of_lockout_and_the_new_routes(client):
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    assert {"401", "413", "429"} <= set(paths["/login"]["post"]["responses"])
    update = paths["/v1/users/{user_id}"]["patch"]
    assert update["summary"] == "Disable or enable a user (admin)"
    assert {"200", "400", "401", "403", "404"} <= set(update["responses"])
    change = paths["/v1/me/password"]["put"]
    assert change["summary"] == "Change your password"
    assert {"200", "400", "401", "403", "429"} <= set(change["responses"])


def test_empty_basic_credentials_and_an_empty_body_are_a_challenge(api, client):
    response = client.post("/login", headers=basic("", ""), json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert api.rows(source="auth") == []


def test_at_most_two_passwords_are_hashed_at_once_in_a_process(monkeypatch):
    """Each argon2 hash holds 19 MiB while it runs; eight threads logging in at once must not
    make that eight times over."""
    from backend import security

    counting = CountingHasher(security._hasher, threading.Lock())
    monkeypatch.setattr(security, "_hasher", counting)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: security.check_password(None, "guess"), range(6)))
    assert results == [False] * 6
    assert counting.peak == 2


@pytest.mark.parametrize(("password", "status"), [(ALICE[1], 200), ("wrong-password", 401)])
def test_no_database_connection_is_held_while_a_password_is_hashed(
    api, users, monkeypatch, password, status
):
    """A hash takes tens of milliseconds, and longer while other logins' hashes go first; the
    request's connection goes back to the pool meanwhile, for the worker's other requests
    (a gevent worker has a pool, not a connection per thread), and a password change's too."""
    from backend.auth import credentials

    real, seen = credentials.check_password, []

    def watched(*args) -> bool:
        seen.append((db.session().in_transaction(), db.engine.pool.checkedout()))
        return real(*args)

    monkeypatch.setattr(credentials, "check_password", watched)
    assert api.client.post("/login", headers=basic(ALICE[0], password)).status_code == status
    change = api.client.put(
        "/v1/me/password",
        headers=bearer(users["alice"]),
        json={"current_password": password, "new_password": NEW_PASSWORD},
    )
    assert change.status_code == (200 if status == 200 else 403)
    assert seen == [(False, 0), (False, 0)]
