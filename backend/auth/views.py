"""POST /login and GET /logout."""

from datetime import timedelta
from typing import NoReturn

import sqlalchemy as sa
from apifairy import authenticate, body, other_responses, response
from flask import abort, current_app, g

from backend.accounts import issue_token
from backend.auth import bp
from backend.auth.credentials import token_problem
from backend.clock import utcnow
from backend.errors import LOCKED_OUT, TOO_LARGE, UNAUTHORIZED
from backend.extensions import basic_auth, db, token_auth
from backend.models import Token
from backend.schemas import ErrorSchema, LoginSchema, MessageSchema, TokenSchema
from backend.signals import Target, announce, announces, auth_log


@bp.post("/login")
@announces("login.success", "login.failure", "login.locked")
@authenticate(basic_auth)
@body(LoginSchema)
@response(TokenSchema)
@other_responses(
    {
        400: (ErrorSchema, "Malformed credentials"),
        401: (ErrorSchema, "Unknown user, wrong password or disabled user"),
        413: (ErrorSchema, TOO_LARGE),
        **LOCKED_OUT,
        503: (ErrorSchema, "The audit trail cannot record the login"),
    }
)
def login(credentials: dict):
    """Log in with HTTP Basic or a JSON body and get a new bearer token

    Every login makes a new token; earlier tokens stay valid until they expire, are revoked
    by logout, or the user changes password or is disabled. An unknown user, a wrong password
    and a disabled user get the same 401, after the same work. Consecutive failures lock this
    account from this address (5 by default), this address (20) and, for a minute, this
    account (20; not from an address it logged in from lately). A locked attempt is checked
    no further: 429, with `Retry-After` in seconds. docs/login-security.md has the rules.
    """
    user = basic_auth.current_user()
    # Issued now: a change committed before this login read the user (whose new password it
    # checked) must not date the token before itself. A change after the read is what
    # issue_token refuses; one after the token, what revoke_tokens revokes.
    created_at = utcnow()
    expires_at = created_at + timedelta(seconds=current_app.config["TOKEN_TTL"])
    token = issue_token(user.id, g.checked_password_hash, created_at, expires_at)
    db.session.commit()
    if token is None:  # the password changed, or the user was disabled, since it was checked
        announce(
            auth_log,
            "login.failure",
            level="WARNING",
            status=401,
            track="password changed or user disabled during the login",
            user=user.username,
            actor_id=user.id,
            outcome="failure",
            reason="credentials_changed",
        )
        abort(basic_auth.auth_error_callback(401))  # the 401 of any failed login
    announce(
        auth_log,
        "login.success",
        level="INFO",
        status=200,
        track="logged in",
        user=user.username,
        actor_id=user.id,
    )
    return {"token": token, "token_type": "Bearer", "expires_at": expires_at, "user": user}


@bp.get("/logout")
@announces("logout")
@authenticate(token_auth, optional=True)  # a bad token is refused below, once recorded
@response(MessageSchema)
@other_responses({**UNAUTHORIZED, 503: (ErrorSchema, "The audit trail cannot record the logout")})
def logout():
    """Revoke the bearer token of this request"""
    if token_auth.current_user() is None:
        refuse_logout()
    db.session.execute(
        sa.update(Token)
        .where(Token.id == g.caller.token_id, Token.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    db.session.commit()
    announce(
        auth_log,
        "logout",
        level="INFO",
        status=200,
        track="logged out",
        user=token_auth.current_user().username,
        target=Target("token", g.caller.token_id),
    )
    return {"message": "logged out"}


# `details.reason` of a refused logout, by what token_problem found.
TOKEN_PROBLEMS = {
    "unknown token": "unknown_token",
    "revoked token": "revoked_token",
    "expired token": "expired_token",
    "disabled user": "disabled",
    "token older than the password": "password_changed",
}


def refuse_logout() -> NoReturn:
    """A logout with a token that is not live: a `logout` row at WARNING saying why (like a
    failed login's), then the 401 of any bad token. No token at all is a challenge, not an
    attempt, and leaves no row (as a login without credentials)."""
    token = getattr(token_auth.get_auth(), "token", None)
    if token:
        username, problem = token_problem(token)
        announce(
            auth_log,
            "logout",
            level="WARNING",
            status=401,
            track=problem,
            user=username,
            reason=TOKEN_PROBLEMS.get(problem, "invalid_token"),
        )
    abort(token_auth.auth_error_callback(401))
