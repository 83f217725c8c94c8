"""Taking access away: a new password or a disabled user revokes every token of the user."""

import sqlalchemy as sa

from backend.clock import utcnow
from backend.extensions import db
from backend.models import Token, User
from backend.security import hash_password


def change_password(user: User, password: str) -> int:
    """Store a new password and revoke the user's tokens; return how many were live."""
    now = utcnow()
    user.password_hash = hash_password(password)
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
    """Mark every live token of `user` revoked (in the session's transaction)."""
    result = db.session.execute(
        sa.update(Token)
        .where(Token.user_id == user.id, Token.revoked_at.is_(None), Token.expires_at > now)
        .values(revoked_at=now)
    )
    return result.rowcount
