"""How a request proves who it is: a password at login, a bearer token everywhere else."""

import sqlalchemy as sa
from flask import current_app, g, request
from marshmallow import ValidationError
from werkzeug.exceptions import BadRequest

from backend.clock import utcnow
from backend.errors import ValidationFailed
from backend.extensions import auth_log, basic_auth, db, token_auth
from backend.models import Token, User
from backend.schemas import LoginSchema
from backend.security import check_password, hash_password, needs_rehash, token_digest


@basic_auth.verify_password
def verify_password(username: str, password: str) -> User | None:
    """Check login credentials from HTTP Basic or, failing that, a JSON body.

    An unknown user and a wrong password cost the same time and give the same 401; only the
    audit row tells them apart, for the admins.
    """
    if not username and not password:
        username, password = _json_credentials()
        if username is None:
            return None  # no credentials at all: a challenge, not a failed attempt
    user = db.session.scalar(sa.select(User).where(User.username == username))
    if check_password(user.password_hash if user else None, password):
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
            db.session.commit()
        return user
    auth_log.send(current_app._get_current_object(), event="login.failure", level="WARNING",
                  user=username, status=401,
                  track="unknown user" if user is None else "invalid password")
    return None


def _json_credentials() -> tuple[str | None, str | None]:
    if not request.is_json:
        return None, None
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("The request body is not valid JSON.")
    try:
        credentials = LoginSchema().load(body)
    except ValidationError as error:
        raise ValidationFailed(error.normalized_messages()) from None
    return credentials["username"], credentials["password"]


@token_auth.verify_token
def verify_token(token: str) -> User | None:
    """The user of a live token (not expired, not revoked); the token itself goes to `g`."""
    if not token:
        return None
    row = db.session.execute(
        sa.select(Token, User)
        .join(Token.user)
        .where(Token.digest == token_digest(token), Token.revoked_at.is_(None),
               Token.expires_at > utcnow())
    ).first()
    if row is None:
        return None
    g.token = row.Token
    return row.User


@token_auth.get_user_roles
def user_roles(user: User) -> list[str]:
    """`admin` for admins, nothing else."""
    return ["admin"] if user.is_admin else []
