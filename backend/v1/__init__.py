"""The REST API under /v1: the current user, users, and the audit trail."""

from flask import Blueprint, Response, g, request

from backend.audit.events import level_for_status
from backend.audit.group_commit import AuditUnavailable
from backend.errors import error_response
from backend.extensions import token_auth
from backend.signals import Target, announce, v1_log

bp = Blueprint("v1", __name__, url_prefix="/v1")

# The machine-readable reason of a refused /v1 request, by status, unless the view said better
# (`note`). The client's answer stays what it is; only the trail tells these apart.
REASONS = {
    400: "invalid_parameter",  # `invalid_body` for a request with a body
    401: "invalid_token",
    403: "not_admin",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def note(*, target: Target | None = None, reason: str | None = None, **details) -> None:
    """What this request's `api.request` row says beyond its status: the `target` acted on or
    read, the `reason` of a refusal, and `details` (a read of the trail's `filters`)."""
    g.audit_note = {"target": target, "reason": reason, "details": details}


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
    said = g.get("audit_note") or {}
    reason = said.get("reason") or (REASONS.get(status) if status >= 400 else None)
    if status == 401 and request.authorization is None:
        reason = "no_token"
    elif status == 400 and reason == REASONS[400] and request.content_length:
        reason = "invalid_body"
    try:
        announce(
            v1_log,
            "api.request",
            level=level_for_status(status),
            status=status,
            track=f"{request.method} {request.full_path.rstrip('?')} -> {status}",
            user=getattr(user, "username", None),
            target=said.get("target"),
            reason=reason,
            details=said.get("details"),
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


from backend.v1 import integrity, logs, sinks, stream, tree, users  # noqa: E402,F401  (registers the routes)
