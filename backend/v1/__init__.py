"""The REST API under /v1: the current user, users, and the audit trail."""

from flask import Blueprint, Response, current_app, request

from backend.audit.events import level_for_status
from backend.audit.writer import AuditUnavailable
from backend.errors import error_response
from backend.extensions import token_auth, v1_log

bp = Blueprint("v1", __name__, url_prefix="/v1")


@bp.after_app_request
def record_api_request(response: Response) -> Response:
    """Send `api.request` for every /v1 request: routed or not, allowed or not, whatever status.

    An app-wide hook because a 404 from routing belongs to no blueprint. If the trail cannot
    take the row, the client gets a 503 instead of the response it would have had.
    """
    if request.path != bp.url_prefix and not request.path.startswith(bp.url_prefix + "/"):
        return response
    user = token_auth.current_user()
    status = response.status_code
    try:
        v1_log.send(current_app._get_current_object(), event="api.request",
                    level=level_for_status(status), user=getattr(user, "username", None),
                    status=status, track=f"{request.method} {request.full_path.rstrip('?')}"
                                         f" -> {status}")
    except AuditUnavailable as error:
        return error_response(error.code, error.description)
    return response


from backend.v1 import logs, users  # noqa: E402,F401  (registers the routes)
