"""/v1/logs: query the audit trail, page by page, or one row."""

from apifairy import arguments, authenticate, other_responses, response
from flask import request, url_for
from marshmallow import RAISE
from werkzeug.exceptions import NotFound

from backend.audit import query
from backend.extensions import token_auth
from backend.schemas import ErrorSchema, LogPageSchema, LogQuerySchema, LogSchema
from backend.v1 import bp
from backend.v1.users import UNAUTHORIZED


@bp.get("/logs")
@authenticate(token_auth)
@arguments(LogQuerySchema, unknown=RAISE)
@response(LogPageSchema)
@other_responses({**UNAUTHORIZED, 400: (ErrorSchema, "Unknown parameter, bad value or cursor")})
def logs(args: dict):
    """Query the audit trail, newest first

    Admins see every row, other users the rows whose `user` is themselves. Pages follow the
    `next` cursor (also sent as a `Link: <...>; rel="next"` header).
    """
    rows, next_cursor = query.page(args, token_auth.current_user(), order=args["order"],
                                   limit=args["limit"], after=args.get("after"))
    headers = {}
    if next_cursor is not None:
        next_cursor = next_cursor.encode()
        params = request.args.to_dict(flat=False) | {"after": next_cursor}
        headers["Link"] = f'<{url_for("v1.logs", _external=True, **params)}>; rel="next"'
    return {"items": rows, "next": next_cursor}, 200, headers


@bp.get("/logs/<int:log_id>")
@authenticate(token_auth)
@response(LogSchema)
@other_responses({**UNAUTHORIZED, 404: (ErrorSchema, "No such row, or not yours to see")})
def log(log_id: int):
    """One row of the audit trail"""
    row = query.visible_row(log_id, token_auth.current_user())
    if row is None:
        raise NotFound("No audit row with that id is visible to you.")
    return row
