"""Giving and taking access: a login's token is stored only while the password it was checked
against is still the user's; a new password or a disabled user revokes every token of the user.

Why no token made with an old password outlives a change, whatever the interleaving (the same
holds for disabling a user). A login reads the user, checks the password against the hash it
read (tens of milliseconds, with no connection held), then stores its token with
`issue_token`: one statement that inserts the token only if the user's hash is still the one
checked and the user is not disabled, locking the user's row (FOR SHARE on PostgreSQL; on
SQLite the statement takes the database's one write lock). A change writes the user's row
first (`revoke_tokens` flushes it), then revokes the user's tokens, then commits:

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

from datetime import datetime

import sqlalchemy as sa

from backend.clock import utcnow
from backend.db_types import UTCDateTime
from backend.extensions import db
from backend.models import Token, User
from backend.security import hash_password, new_token


def issue_token(user_id: int, checked_hash: str, created_at: datetime,
                expires_at: datetime) -> str | None:
    """A new token for the user, stored only while `checked_hash` is still their password hash
    and they are not disabled (in the session's transaction); None when either changed."""
    token, digest = new_token()
    still_valid = (
        sa.select(sa.literal(digest), User.id, sa.literal(created_at, UTCDateTime),
                  sa.literal(expires_at, UTCDateTime))
        .where(User.id == user_id, User.password_hash == checked_hash,
               User.disabled_at.is_(None))
        .with_for_update(read=True)  # FOR SHARE: a change waits until this token is committed
    )
    token_id = db.session.scalar(
        sa.insert(Token).from_select(["digest", "user_id", "created_at", "expires_at"],
                                     still_valid)
        .returning(Token.id))
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
