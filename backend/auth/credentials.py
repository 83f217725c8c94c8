"""How a request proves who it is: a password at login, a bearer token everywhere else."""

import threading
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from flask import g, request
from marshmallow import ValidationError
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from werkzeug.exceptions import BadRequest

from backend.audit.events import storable
from backend.auth.lockout import LockedOut, Throttle
from backend.clock import utcnow
from backend.db_types import autocommit_connection
from backend.errors import ValidationFailed, fields_of
from backend.extensions import basic_auth, db, token_auth
from backend.models import Token, User
from backend.schemas import LoginSchema
from backend.security import check_password, hash_password, needs_rehash, token_digest
from backend.signals import announce, auth_log


class Outcome(Enum):
    """What a password check found; a refusal's value is its reason, for the trail."""

    SUCCESS = "success"
    UNKNOWN_USER = "unknown user"
    INVALID_PASSWORD = "invalid password"
    DISABLED = "disabled user"
    LOCKED = "locked out"


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """The outcome of a password check, with the user it lets in (SUCCESS only)."""

    outcome: Outcome
    user: User | None = None
    # SUCCESS: the hash the password matched, as read (not as the user's row may hold it by
    # now, after a password change): what a login's token is issued against (issue_token).
    checked_hash: str | None = None
    # LOCKED: how long until an attempt may be made, and which keys are locked.
    retry_after: int = 0
    locked: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        """The machine-readable reason (`details.reason`): `unknown_user`, `invalid_password`,
        `disabled`, `locked`."""
        return self.outcome.name.lower()

    @property
    def reason(self) -> str:
        """Why the password does not let the user in, for the row's `track`."""
        if self.outcome is Outcome.LOCKED:
            return f"locked out for {self.retry_after} s: {', '.join(self.locked)}"
        return self.outcome.value


@basic_auth.verify_password
def verify_password(username: str, password: str) -> User | None:
    """Check login credentials from HTTP Basic or, failing that, a JSON body."""
    if not _sent_basic():  # Flask-HTTPAuth's Basic parser reads any scheme's credentials: a
        username = password = ""  # Bearer token that happens to decode as `x:y` would count
    if not username and not password:
        username, password = _json_credentials()
        if username is None:
            return None  # no credentials at all: a challenge, not a failed attempt
    username = storable(username)
    check = authenticate_password(username, password)
    if check.outcome is not Outcome.SUCCESS:
        announce_refusal(check, auth_log, "login", status=401, user=username)
        return None
    g.checked_password_hash = check.checked_hash
    return check.user


def announce_refusal(
    check: PasswordCheck, signal, event: str, *, status: int, user: str, target=None
) -> None:
    """Announce a password check that did not succeed: `<event>.locked` and LockedOut (429)
    for a locked-out attempt (`denied`), else `<event>.failure` with `status` (a `failure`:
    the caller then refuses). `details.reason` says which check failed."""
    if check.outcome is Outcome.LOCKED:
        announce(
            signal,
            f"{event}.locked",
            level="WARNING",
            status=LockedOut.code,
            track=check.reason,
            user=user,
            outcome="denied",
            reason=check.code,
            target=target,
            details={"retry_after": check.retry_after},
        )
        raise LockedOut(retry_after=check.retry_after)
    announce(
        signal,
        f"{event}.failure",
        level="WARNING",
        status=status,
        track=check.reason,
        user=user,
        outcome="failure",
        reason=check.code,
        target=target,
    )


def _sent_basic() -> bool:
    """The request's Authorization header uses the Basic scheme."""
    authorization = request.authorization
    return authorization is not None and authorization.type == "basic"


def authenticate_password(username: str, password: str) -> PasswordCheck:
    """Check `username`'s password within the lockout rules, for a login or a password change.

    While the attempt is locked out (`backend.auth.lockout`) nothing is checked: LOCKED. An
    unknown name, a wrong password and a disabled user are one kind of failure to the client:
    they cost the same time and count toward a lock; only the outcome tells them apart. On
    success, a hash made with older parameters is replaced, now that the password is at hand.
    """
    throttle = Throttle(username, request.remote_addr)
    with _checking:
        if (lock := throttle.lock()) is None:
            return _check(throttle, username, password)
    seconds, scopes = lock
    return PasswordCheck(Outcome.LOCKED, retry_after=seconds, locked=tuple(scopes))


# A process checks at most this many passwords at once, each from its lockout check to the
# counting of its outcome. A check then sees every failure counted before it began but one:
# guesses sent all at once cannot all pass the check before the first is counted (a gevent
# worker would take up to a thousand at once), and with lockouts at 5 failures at most
# workers x 2 - 1 more are checked. Two, as two hashes run at once anyway (security.py).
CHECKS_AT_ONCE = 2
_checking = threading.BoundedSemaphore(CHECKS_AT_ONCE)


def _check(throttle: Throttle, username: str, password: str) -> PasswordCheck:
    """Check the password and count the outcome."""
    user = db.session.scalar(sa.select(User).where(User.username == username))
    # The hash takes tens of milliseconds, more while other logins' hashes go first: not with
    # a pooled connection (and its transaction) held, which the worker's other requests would
    # wait for. Closing keeps what was read of the user (detached) and writes nothing: the
    # session held nothing else to write (a login or a password change reads first).
    db.session.close()
    problem = password_problem(user, password)
    if problem is not None:
        throttle.record_failure()
        return PasswordCheck(problem)
    checked = user.password_hash
    db.session.add(user)  # back in the session, for the caller
    if needs_rehash(checked):  # made with older parameters: replace it now,
        # unless the password changed since it was read: that hash is not ours to undo
        rehashed = hash_password(password)
        db.session.execute(
            sa.update(User)
            .where(User.id == user.id, User.password_hash == checked)
            .values(password_hash=rehashed)
        )
        checked = rehashed
    throttle.record_success()  # commits, the new hash with it
    return PasswordCheck(Outcome.SUCCESS, user, checked_hash=checked)


def password_problem(user: User | None, password: str) -> Outcome | None:
    """Why `password` does not let `user` in, or None when it does."""
    if not check_password(user.password_hash if user else None, password):
        return Outcome.UNKNOWN_USER if user is None else Outcome.INVALID_PASSWORD
    return Outcome.DISABLED if user.disabled else None


def _json_credentials() -> tuple[str | None, str | None]:
    if not request.is_json:
        return None, None
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("The request body is not valid JSON.")
    try:
        credentials = LoginSchema().load(body)
    except ValidationError as error:
        raise ValidationFailed(fields_of({"json": error.normalized_messages()})) from None
    # Empty: HTTP Basic with neither name nor password, and `{}`: no credentials at all.
    return credentials.get("username"), credentials.get("password")


@dataclass(frozen=True, slots=True)
class Caller:
    """The holder of a live bearer token: what a request needs of its user, and the token."""

    id: int
    username: str
    is_admin: bool
    created_at: datetime
    token_id: int


# Built once: constructing the statement cost more than running it.
LIVE_TOKEN = (
    sa.select(User.id, User.username, User.is_admin, User.created_at, Token.id.label("token_id"))
    .join(Token.user)
    .where(
        Token.digest == sa.bindparam("digest"),
        Token.revoked_at.is_(None),
        Token.expires_at > sa.bindparam("now"),
        User.disabled_at.is_(None),
        sa.or_(User.password_changed_at.is_(None), Token.created_at >= User.password_changed_at),
    )
)


# The same statement as PostgreSQL runs it through psycopg, which prepares it on the server.
_PG_LIVE_TOKEN = str(LIVE_TOKEN.compile(dialect=psycopg_dialect()))


@token_auth.verify_token
def verify_token(token: str) -> Caller | None:
    """The holder of a live token (also in `g.caller`), or None.

    Live: not expired, not revoked, its user not disabled and no password change since the
    login that made it began (revocation is immediate either way; these close the races).
    Every authenticated request runs this, so on PostgreSQL it is one prepared statement on
    the driver's connection in autocommit: one round trip, no BEGIN and ROLLBACK around it,
    and no ORM objects or session for a request that only needs to know who asks.
    """
    if not token:
        return None
    params = {"digest": token_digest(token), "now": utcnow()}
    if db.engine.dialect.name == "postgresql":
        with autocommit_connection(db.engine) as connection:
            row = connection.execute(_PG_LIVE_TOKEN, params, prepare=True).fetchone()
    else:
        with db.engine.connect() as connection:
            row = connection.execute(LIVE_TOKEN, params).first()
    if row is None:
        return None
    g.caller = Caller(*row)
    return g.caller


def token_problem(token: str) -> tuple[str | None, str]:
    """Why `token` is not live, for the trail: (its user's name, or None for a token nobody
    was given; the reason), in the order LIVE_TOKEN checks."""
    row = db.session.execute(
        sa.select(
            User.username,
            User.disabled_at,
            User.password_changed_at,
            Token.created_at,
            Token.expires_at,
            Token.revoked_at,
        )
        .join(Token.user)
        .where(Token.digest == token_digest(token))
    ).first()
    if row is None:
        return None, "unknown token"
    if row.revoked_at is not None:
        problem = "revoked token"
    elif row.expires_at <= utcnow():
        problem = "expired token"
    elif row.disabled_at is not None:
        problem = "disabled user"
    elif row.password_changed_at is not None and row.created_at < row.password_changed_at:
        problem = "token older than the password"
    else:  # live now: a user enabled again since the check
        problem = "invalid token"
    return row.username, problem


@token_auth.get_user_roles
def user_roles(user: Caller) -> list[str]:
    """`admin` for admins, nothing else."""
    return ["admin"] if user.is_admin else []
