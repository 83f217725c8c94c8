"""Users and their tokens: create a user, ensure an admin, change a password, disable or enable
a user, revoke a user's tokens, and issue a login's token. One path for the API, the CLI and
the boot script; password hashing and token material are in `backend.security`.

A login's token is stored only while the password it was checked against is still the user's;
a new password or a disabled user revokes every token of the user. Why no token made with an
old password outlives a change, whatever the interleaving (the same holds for disabling a
user). A login reads the user, checks the password against the hash it read (tens of
milliseconds, with no connection held), then stores its token with `issue_token`: one
statement that inserts the token only if the user's hash is still the one checked and the
user is not disabled, locking the user's row (FOR SHARE on PostgreSQL; on SQLite the
statement takes the database's one write lock). A change writes the user's row first
(`revoke_tokens` flushes it), then revokes the user's tokens, then commits:

- the login's insert comes first: it holds the row, so the change's UPDATE of the user waits
  until the login commits; the change's revocation, a later statement, sees that token and
  revokes it (PostgreSQL's READ COMMITTED gives each statement a fresh snapshot);
- the change's UPDATE comes first: the login's insert waits for the row; once the change
  commits, PostgreSQL checks the updated row again and the hash no longer matches: no token
  (on SQLite the insert waits for the write lock and then reads the new hash);
- the change committed before the login read the user: the login checks the new hash, and a
  wrong password is a plain failed login.

No clock is involved: a change stamped before the login began (a slow hash, another machine's
clock) cannot let the login's token live, as a comparison of timestamps alone could.
"""

import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from backend.clock import utcnow
from backend.db_types import UTCDateTime
from backend.extensions import db
from backend.models import Token, User
from backend.security import hash_password, new_token
from backend.signals import Target


def user_target(user: User | None = None, *, name: str | None = None) -> Target:
    """A user as the target of an act (the trail's `target_*` fields): its id, and its name at
    the time; or only a name, for one that does not exist (yet)."""
    if user is None:
        return Target("user", None, name)
    return Target("user", user.id, user.username)


def creation_changes(user: User) -> dict:
    """A new user's fields as `details.changes` (`{"field": [None, value]}`); the password is
    there, redacted (backend.audit.events.safe_details)."""
    return {
        "username": [None, user.username],
        "is_admin": [None, user.is_admin],
        "password": [None, None],
    }


class UsernameTaken(ValueError):
    """Another user already has this name."""


def create_user(username: str, password: str, is_admin: bool = False) -> User:
    """Store a new user with a hashed password; raise UsernameTaken if the name is in use."""
    password_hash = hash_password(password)  # first: with no connection held meanwhile
    if db.session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise UsernameTaken(username)
    user = User(username=username, password_hash=password_hash, is_admin=is_admin)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # lost a race with another request for the same name
        db.session.rollback()
        raise UsernameTaken(username) from None
    return user


def ensure_admin(username: str | None, password: str | None) -> tuple[User | None, str | None]:
    """Make sure the service can be administered; return (created user, generated password).

    With a name and password, create that admin unless the name exists. Without them, and only
    while there are no users at all, create `admin` with a random password for the caller to
    print once. Otherwise do nothing and return (None, None).
    """
    if username and password:
        try:
            return create_user(username, password, is_admin=True), None
        except UsernameTaken:
            return None, None
    if db.session.scalar(sa.select(User.id).limit(1)) is not None:
        return None, None
    generated = secrets.token_urlsafe(12)
    return create_user("admin", generated, is_admin=True), generated


def issue_token(
    user_id: int, checked_hash: str, created_at: datetime, expires_at: datetime
) -> str | None:
    """A new token for the user, stored only while `checked_hash` is still their password hash
    and they are not disabled (in the session's transaction); None when either changed."""
    token, digest = new_token()
    still_valid = (
        sa.select(
            sa.literal(digest),
            User.id,
            sa.literal(created_at, UTCDateTime),
            sa.literal(expires_at, UTCDateTime),
        )
        .where(User.id == user_id, User.password_hash == checked_hash, User.disabled_at.is_(None))
        .with_for_update(read=True)  # FOR SHARE: a change waits until this token is committed
    )
    token_id = db.session.scalar(
        sa.insert(Token)
        .from_select(["digest", "user_id", "created_at", "expires_at"], still_valid)
        .returning(Token.id)
    )
    return token if token_id is not None else None


def change_password(user: User, password: str) -> int:
    """Store a new password and revoke the user's tokens; return how many were live."""
    password_hash = hash_password(password)  # first: no connection is held meanwhile
    now = utcnow()
    user.password_hash = password_hash
    user.password_changed_at = now
    revoked = revoke_tokens(user, now)
    db.session.commit()
    return revoked


def set_disabled(user: User, disabled: bool) -> int:
    """Disable (revoking every token) or enable the user; return how many tokens were revoked."""
    now = utcnow()
    user.disabled_at = now if disabled else None
    revoked = revoke_tokens(user, now) if disabled else 0
    db.session.commit()
    return revoked


def revoke_tokens(user: User, now) -> int:
    """Mark every live token of `user` revoked (in the session's transaction).

    The user's changed row is written first: its lock orders this after any login that is
    storing a token for the user (see the module's docstring)."""
    db.session.flush()
    result = db.session.execute(
        sa.update(Token)
        .where(Token.user_id == user.id, Token.revoked_at.is_(None), Token.expires_at > now)
        .values(revoked_at=now)
    )
    return result.rowcount
