"""The REST API under /v1: the current user, users, and the audit trail."""

from flask import Blueprint, Response, g, request

from backend.audit.events import level_for_status
from backend.audit.group_commit import AuditUnavailable
from backend.errors import error_response
from backend.extensions import token_auth
from backend.signals import announce, v1_log

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.after_app_request
def record_api_request(response: Response) -> Response:
    """Send `api.request` for every /v1 request: routed or not, allowed or not, whatever status.

    An app-wide hook because a 404 from routing belongs to no blueprint. If the trail cannot
    take the row, the client gets a 503 instead of the response it would have had.
    """
    if request.path != bp.url_prefix and not request.path.startswith(bp.url_prefix + "/"):
        return response
    user = caller()
    status = response.status_code
    try:
        announce(
            v1_log,
            "api.request",
            level=level_for_status(status),
            status=status,
            track=f"{request.method} {request.full_path.rstrip('?')} -> {status}",
            user=getattr(user, "username", None),
        )
    except AuditUnavailable as error:
        return error_response(error.code, error.description)
    return response


def caller():
    """The holder of the request's valid bearer token, or None: a caller with a live token is
    not anonymous, whatever the status.

    Flask-HTTPAuth sets current_user() only once the role check passes; a 403 must still name
    the token's holder (`g.caller` is set by verify_token for any live token). A 404 or 405 from
    routing ran no view, so nothing checked the token yet: check it here.
    """
    user = token_auth.current_user() or g.get("caller")
    if user is None and request.routing_exception is not None:
        user = token_auth.authenticate(token_auth.get_auth(), None) or None
    return user


from backend.v1 import integrity, logs, tree, users  # noqa: E402,F401  (registers the routes)
