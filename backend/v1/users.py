"""/v1/me, /v1/me/password and /v1/users."""

import sqlalchemy as sa
from apifairy import authenticate, body, other_responses, response
from werkzeug.exceptions import Conflict, Forbidden, NotFound

from backend import accounts
from backend.audit.events import REDACTED
from backend.auth.credentials import Outcome, announce_refusal, authenticate_password
from backend.clock import rfc3339
from backend.errors import ADMIN_ONLY, INVALID_FIELDS, LOCKED_OUT, UNAUTHORIZED
from backend.extensions import db, token_auth
from backend.models import User
from backend.schemas import (
    ErrorSchema,
    MessageSchema,
    NewUserSchema,
    PasswordChangeSchema,
    UserListSchema,
    UserSchema,
    UserStatusSchema,
    UserUpdateSchema,
)
from backend.signals import announce, announces, v1_log
from backend.v1 import bp, note


@bp.get("/me")
@authenticate(token_auth)
@other_responses({200: (UserSchema, "The holder of the bearer token"), **UNAUTHORIZED})
def me():
    """The current user"""
    # Not through @response: the hottest read of the API, and the schema's dump is a tenth of it.
    user = token_auth.current_user()
    return {
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "created_at": rfc3339(user.created_at),
    }


@bp.get("/users")
@authenticate(token_auth, role="admin")
@response(UserListSchema)
@other_responses(ADMIN_ONLY)
def list_users():
    """Every user, oldest first (admin)"""
    return {"items": db.session.scalars(sa.select(User).order_by(User.id)).all()}


@bp.post("/users")
@announces("user.create")
@authenticate(token_auth, role="admin")
@body(NewUserSchema)
@response(UserSchema, 201)
@other_responses({**ADMIN_ONLY, **INVALID_FIELDS, 409: (ErrorSchema, "The username is taken")})
def new_user(fields: dict):
    """Create a user (admin)"""
    try:
        user = accounts.create_user(fields["username"], fields["password"], fields["is_admin"])
    except accounts.UsernameTaken:
        note(target=accounts.user_target(name=fields["username"]), reason="username_taken")
        raise Conflict(f"The username {fields['username']!r} is taken.") from None
    announce(
        v1_log,
        "user.create",
        level="INFO",
        status=201,
        track=f"created {'admin' if user.is_admin else 'user'} {user.username}",
        user=token_auth.current_user().username,
        target=accounts.user_target(user),
        changes=accounts.creation_changes(user),
    )
    note(target=accounts.user_target(user))
    return user


@bp.patch("/users/<int:user_id>")
@announces("user.disable", "user.enable", "token.revoke")
@authenticate(token_auth, role="admin")
@body(UserUpdateSchema)
@response(UserStatusSchema)
@other_responses(
    {
        **UNAUTHORIZED,
        **INVALID_FIELDS,
        403: (ErrorSchema, "Admins only; and no admin may disable themselves"),
        404: (ErrorSchema, "No such user"),
    }
)
def update_user(fields: dict, user_id: int):
    """Disable or enable a user (admin)

    `{"disabled": true}` revokes every token of the user at once, and their logins get the
    same 401 as a wrong password; `{"disabled": false}` lets them log in again. An admin
    cannot disable themselves (403). Non-admins get 403 whether or not the user exists.
    """
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("No user with that id.")
    admin = token_auth.current_user()
    note(target=accounts.user_target(user))
    if fields["disabled"] and user.id == admin.id:
        # A valid request that a rule refuses: 403, not the 400 of a malformed one.
        note(target=accounts.user_target(user), reason="self_disable")
        raise Forbidden("You cannot disable yourself.")
    disabled = fields["disabled"]
    if disabled != user.disabled:
        revoked = accounts.set_disabled(user, disabled)
        action = "disable" if disabled else "enable"
        announce(
            v1_log,
            f"user.{action}",
            level="INFO",
            status=200,
            track=f"{action}d user {user.username}"
            + (f"; tokens revoked: {revoked}" if disabled else ""),
            user=admin.username,
            target=accounts.user_target(user),
            changes={"disabled": [not disabled, disabled]},
        )
        announce_revoked(user, revoked, admin.username)
    return user


def announce_revoked(user: User, revoked: int, by: str) -> None:
    """`token.revoke`: the tokens of `user` that an act (a disable, a password change) revoked,
    when there were any."""
    if revoked:
        announce(
            v1_log,
            "token.revoke",
            level="INFO",
            status=200,
            track=f"revoked {revoked} token{'' if revoked == 1 else 's'} of {user.username}",
            user=by,
            target=accounts.user_target(user),
            changes={"live_tokens": [revoked, 0]},
            details={"revoked_tokens": revoked},
        )


@bp.put("/me/password")
@announces("password.change", "token.revoke")
@authenticate(token_auth)
@body(PasswordChangeSchema)
@response(MessageSchema)
@other_responses(
    {
        **UNAUTHORIZED,
        **INVALID_FIELDS,
        403: (ErrorSchema, "The current password is wrong"),
        **LOCKED_OUT,
    }
)
def change_password(fields: dict):
    """Change your password

    Needs the current one, checked like a login: a wrong one counts toward the same lockout
    (a stolen token is no way to guess the password). Every token of yours, this one too, is
    revoked: log in again with the new password.
    """
    username = token_auth.current_user().username
    check = authenticate_password(username, fields["current_password"])
    target = accounts.user_target(token_auth.current_user())
    if check.outcome is not Outcome.SUCCESS:
        note(target=target, reason=check.code)
        announce_refusal(check, v1_log, "password.change", status=403, user=username, target=target)
        raise Forbidden("The current password is wrong.")
    revoked = accounts.change_password(check.user, fields["new_password"])
    announce(
        v1_log,
        "password.change",
        level="INFO",
        status=200,
        track=f"changed password; tokens revoked: {revoked}",
        user=username,
        target=target,
        changes={"password": [REDACTED, REDACTED]},
        details={"revoked_tokens": revoked},
    )
    announce_revoked(check.user, revoked, username)
    return {"message": "Password changed; log in again."}
