"""HTTP hardening: headers on every response, and the body size limit before any view runs.

Responses: an API's answers are personal and not for caching, sniffing or framing. The
headers are added after everything else (so to errors too, and to the 503 that replaces a
response whose audit row failed); a header a view set itself is kept.

Requests: a body over MAX_CONTENT_LENGTH is refused with 413 up front. Werkzeug alone would
refuse it only when a view reads the body, and a login with HTTP Basic reads none: its
password would be checked (and counted) first.
"""

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

SECURITY_HEADERS = {
    # Tokens, users and audit rows must not stay in a browser's or a proxy's cache.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # OWASP REST Security Cheat Sheet: no framing of API responses.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


def init_app(app: Flask) -> None:
    """Register both on `app`; call before the blueprints, so that these run outermost."""
    app.before_request(refuse_oversized_body)
    app.after_request(add_security_headers)


def refuse_oversized_body() -> None:
    """413 for a declared body over MAX_CONTENT_LENGTH (a chunked one fails when read)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()


def add_security_headers(response: Response) -> Response:
    """SECURITY_HEADERS, unless the response has its own value."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
