"""How a request proves who it is: a password at login, a bearer token everywhere else."""

import threading
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from blinker import NamedSignal
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


@basic_auth.verify_password
def verify_password(username: str, password: str) -> User | None:
    """Check login credentials from HTTP Basic or, failing that, a JSON body."""
    if not _sent_basic():  # Flask-HTTPAuth's Basic parser reads any scheme's credentials: a
        username = password = ""  # Bearer token that happens to decode as `x:y` would count
    if not username and not password:
        username, password = _json_credentials()
        if username is None:
            return None  # no credentials at all: a challenge, not a failed attempt
    # Before the user is read: the token this login makes dates from here (see Token).
    g.login_started_at = utcnow()
    return authenticate_password(storable(username), password, signal=auth_log, event="login",
                                 status=401)


def _sent_basic() -> bool:
    """The request's Authorization header uses the Basic scheme."""
    authorization = request.authorization
    return authorization is not None and authorization.type == "basic"


def authenticate_password(username: str, password: str, *, signal: NamedSignal, event: str,
                          status: int) -> User | None:
    """The user whose password this is, within the lockout rules; None for a failed check.

    While the attempt is locked out (`backend.auth.lockout`), send `<event>.locked` and raise
    LockedOut (429) without checking anything. An unknown name, a wrong password and a
    disabled user are one kind of failure: they cost the same time, count toward a lock and
    send `<event>.failure` with `status`; only the row's `track` tells them apart. On success,
    a hash made with older parameters is replaced, now that the password is at hand.
    """
    throttle = Throttle(username, request.remote_addr)
    with _checking:
        if (lock := throttle.lock()) is None:
            user, problem = _check(throttle, username, password)
    if lock is not None:
        seconds, scopes = lock
        announce(signal, f"{event}.locked", level="WARNING", status=429,
                 track=f"locked out for {seconds} s: {', '.join(scopes)}", user=username)
        raise LockedOut(retry_after=seconds)
    if problem is None:
        return user
    announce(signal, f"{event}.failure", level="WARNING", status=status, track=problem,
             user=username)
    return None


# A process checks at most this many passwords at once, each from its lockout check to the
# counting of its outcome. A check then sees every failure counted before it began but one:
# guesses sent all at once cannot all pass the check before the first is counted (a gevent
# worker would take up to a thousand at once), and with lockouts at 5 failures at most
# workers x 2 - 1 more are checked. Two, as two hashes run at once anyway (security.py).
CHECKS_AT_ONCE = 2
_checking = threading.BoundedSemaphore(CHECKS_AT_ONCE)


def _check(throttle: Throttle, username: str, password: str) -> tuple[User | None, str | None]:
    """Check the password and count the outcome: (the user, why it does not let them in)."""
    user = db.session.scalar(sa.select(User).where(User.username == username))
    # The hash takes tens of milliseconds, more while other logins' hashes go first: not with
    # a pooled connection (and its transaction) held, which the worker's other requests would
    # wait for. Closing keeps what was read of the user (detached) and writes nothing: the
    # session held nothing else to write (a login or a password change reads first).
    db.session.close()
    problem = password_problem(user, password)
    if problem is None:
        checked = user.password_hash
        db.session.add(user)  # back in the session, for the caller
        if needs_rehash(checked):  # made with older parameters: replace it now,
            # unless the password changed since it was read: that hash is not ours to undo
            rehashed = hash_password(password)
            db.session.execute(sa.update(User).where(User.id == user.id,
                                                     User.password_hash == checked)
                               .values(password_hash=rehashed))
            checked = rehashed
        # What a login's token is issued against (accounts.issue_token): the hash as read,
        # not as the user's row holds it by then, which a password change may have replaced.
        g.checked_password_hash = checked
        throttle.record_success()  # commits, the new hash with it
    else:
        throttle.record_failure()
    return user, problem


def password_problem(user: User | None, password: str) -> str | None:
    """Why `password` does not let `user` in (for the trail), or None when it does."""
    if not check_password(user.password_hash if user else None, password):
        return "unknown user" if user is None else "invalid password"
    return "disabled user" if user.disabled else None


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
    .where(Token.digest == sa.bindparam("digest"), Token.revoked_at.is_(None),
           Token.expires_at > sa.bindparam("now"), User.disabled_at.is_(None),
           sa.or_(User.password_changed_at.is_(None),
                  Token.created_at >= User.password_changed_at))
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
        sa.select(User.username, User.disabled_at, User.password_changed_at, Token.created_at,
                  Token.expires_at, Token.revoked_at)
        .join(Token.user).where(Token.digest == token_digest(token))).first()
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
