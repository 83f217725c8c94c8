"""The one JSON error shape of CONTRACT.md, for every status and every blueprint.

    {"error": {"status": 400, "code": "bad_request", "message": "...", "details": {...}}}

`details` appears only on validation errors and maps each bad field to its messages. The
error answers the views document (apifairy's `other_responses`) are written here once.
"""

import re

import psycopg
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from marshmallow.exceptions import SCHEMA
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from backend.extensions import apifairy, basic_auth, token_auth
from backend.schemas import ErrorSchema
from backend.signals import announce_exception
from config import MAX_BODY

bp = Blueprint("errors", __name__)

# The documented error answers of the views, to combine in their `@other_responses({...})`.
UNAUTHORIZED = {401: (ErrorSchema, "No valid bearer token")}
ADMIN_ONLY = {**UNAUTHORIZED, 403: (ErrorSchema, "Admins only")}
BAD_PARAMETER = {400: (ErrorSchema, "Unknown parameter, bad value or cursor")}
INVALID_FIELDS = {400: (ErrorSchema, "Invalid fields")}
LOCKED_OUT = {429: (ErrorSchema, "Locked out after too many failures; see `Retry-After`")}
TOO_LARGE = f"The request body is over {MAX_BODY // 1024} KiB"
NOT_JSON = "The body is not JSON (send it with `Content-Type: application/json`)"

# Headers of an HTTPException that carry meaning and must survive the JSON rewrite.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ValidationFailed(BadRequest):
    """A 400 whose `details` name each bad field: `{"limit": ["must be between 1 and 1000"]}`."""

    def __init__(self, details: dict, message: str = "The request has invalid fields."):
        super().__init__(message)
        self.details = details


def error_code(status: int) -> str:
    """`bad_request` for 400, `not_found` for 404, ...: Werkzeug's reason phrase, snake-cased."""
    phrase = HTTP_STATUS_CODES.get(status, "error")
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def error_response(
    status: int,
    message: str | None = None,
    details: dict | None = None,
    headers: dict | None = None,
) -> Response:
    """A JSON error response in the contract's shape."""
    body = {
        "status": status,
        "code": error_code(status),
        "message": message or HTTP_STATUS_CODES.get(status, "Error"),
    }
    if details:
        body["details"] = details
    response = jsonify(error=body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    """Routing 404/405, aborts and our own HTTP exceptions, as JSON."""
    if isinstance(error, InternalServerError):
        return internal_error(error)
    headers = {k: v for k, v in error.get_headers() if k in _KEPT_HEADERS}
    details = getattr(error, "details", None)
    webargs_messages = (getattr(error, "data", None) or {}).get("messages")
    if details is None and isinstance(webargs_messages, dict):
        details = fields_of(webargs_messages)  # e.g. a body that is not JSON at all
    return error_response(error.code or 500, error.description, details, headers)


@bp.app_errorhandler(sa.exc.TimeoutError)
def no_connection_free(error: sa.exc.TimeoutError) -> Response:
    """Every pooled connection stayed in use for config.POOL_TIMEOUT seconds: the service is
    busy (a 503 to retry), not broken (a 500)."""
    current_app.logger.warning("no database connection free: %s", error)
    return error_response(
        503, "The service is busy; try again shortly.", headers={"Retry-After": "1"}
    )


# PostgreSQL's SQLSTATEs of a server that is going or not yet back: terminating connection
# (admin_shutdown, crash_shutdown), "the database system is starting up" (cannot_connect_now).
_SERVER_AWAY = ("57P01", "57P02", "57P03")


def database_away(error: Exception) -> bool:
    """Whether `error` says the database cannot be reached now (refused, cut, restarting), as
    opposed to one that answered with an error about the statement."""
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:  # SQLAlchemy saw the connection die
            return True
        error = error.orig
    if not isinstance(error, psycopg.OperationalError):
        return False
    # No SQLSTATE: the driver's own failure to connect or to talk (no server answered);
    # class 08: connection exceptions.
    return (
        error.sqlstate is None
        or error.sqlstate.startswith("08")
        or (error.sqlstate in _SERVER_AWAY)
    )


@bp.app_errorhandler(sa.exc.DBAPIError)
@bp.app_errorhandler(psycopg.OperationalError)  # the token lookup uses the driver directly
def database_unreachable(error: Exception) -> Response:
    """The database is away (a restart, a failover): a 503 that load balancers and clients
    retry. Any other database error goes on to be the 500 of an unhandled exception, with
    its request.exception row."""
    if not database_away(error):
        raise error
    current_app.logger.warning("database unreachable: %s", getattr(error, "orig", error))
    # It still ended the request: on the record as an unhandled exception is (the row spools).
    announce_exception(error, status=503)
    return error_response(
        503, "The database is unavailable; try again shortly.", headers={"Retry-After": "1"}
    )


def internal_error(error: InternalServerError) -> Response:
    """A 500 that says nothing of what went wrong; the log and the audit row keep the cause."""
    if error.original_exception is not None:
        current_app.logger.error("unhandled exception", exc_info=error.original_exception)
    return error_response(500, "The server could not complete the request.")


def fields_of(messages: dict) -> dict:
    """webargs reports errors per location (`{"query": {"limit": [...]}}`); clients want fields.

    A message about a whole location (`{"json": ["Invalid JSON body."]}`) or a whole schema
    (marshmallow's `_schema`: the body is not an object) is filed under `body`.
    """
    details: dict = {}
    for location_errors in messages.values():
        if not isinstance(location_errors, dict):
            location_errors = {SCHEMA: location_errors}
        for name, errors in location_errors.items():
            details.setdefault("body" if name == SCHEMA else name, []).extend(flat(errors))
    return details


def flat(errors) -> list[str]:
    """A field's messages as one list: a list field reports per item (`{0: ["..."]}`)."""
    if isinstance(errors, dict):
        return [message for item in errors.values() for message in flat(item)]
    if isinstance(errors, list):
        return [message for item in errors for message in flat(item)]
    return [str(errors)]


@apifairy.error_handler
def validation_error(status: int, messages: dict) -> Response:
    """A request that its webargs schema rejected: 400 naming each bad field."""
    return error_response(status, "The request has invalid fields.", fields_of(messages))


@basic_auth.error_handler
def basic_auth_error(status: int) -> Response:
    """Wrong or missing credentials at login (Flask-HTTPAuth adds WWW-Authenticate)."""
    return error_response(status, "Invalid credentials." if status == 401 else None)


@token_auth.error_handler
def token_auth_error(status: int) -> Response:
    """A missing, expired or revoked bearer token (401), or a role the user lacks (403)."""
    message = {
        401: "A valid bearer token is required.",
        403: "You are not allowed to do that.",
    }.get(status)
    return error_response(status, message)
