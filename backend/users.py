"""Creating users: one path for the API, the CLI and the boot script."""

import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from backend.extensions import db
from backend.models import User
from backend.security import hash_password


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
