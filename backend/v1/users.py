"""/v1/me and /v1/users."""

import sqlalchemy as sa
from apifairy import authenticate, body, other_responses, response
from flask import current_app
from werkzeug.exceptions import Conflict

from backend.extensions import db, token_auth, v1_log
from backend.models import User
from backend.schemas import ErrorSchema, NewUserSchema, UserListSchema, UserSchema
from backend.users import UsernameTaken, create_user
from backend.v1 import bp

UNAUTHORIZED = {401: (ErrorSchema, "No valid bearer token")}
ADMIN_ONLY = {**UNAUTHORIZED, 403: (ErrorSchema, "Admins only")}


@bp.get("/me")
@authenticate(token_auth)
@response(UserSchema)
@other_responses(UNAUTHORIZED)
def me():
    """The current user"""
    return token_auth.current_user()


@bp.get("/users")
@authenticate(token_auth, role="admin")
@response(UserListSchema)
@other_responses(ADMIN_ONLY)
def list_users():
    """Every user, oldest first (admin)"""
    return {"items": db.session.scalars(sa.select(User).order_by(User.id)).all()}


@bp.post("/users")
@authenticate(token_auth, role="admin")
@body(NewUserSchema)
@response(UserSchema, 201)
@other_responses({**ADMIN_ONLY, 400: (ErrorSchema, "Invalid fields"),
                  409: (ErrorSchema, "The username is taken")})
def new_user(fields: dict):
    """Create a user (admin)"""
    try:
        user = create_user(fields["username"], fields["password"], fields["is_admin"])
    except UsernameTaken:
        raise Conflict(f"The username {fields['username']!r} is taken.") from None
    v1_log.send(current_app._get_current_object(), event="user.create", level="INFO",
                user=token_auth.current_user().username, status=201,
                track=f"created {'admin' if user.is_admin else 'user'} {user.username}")
    return user
