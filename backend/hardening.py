"""HTTP hardening: headers on every response, and the body size limit before any view runs.

Responses: an API's answers are personal and not for caching, sniffing or framing. The
headers are added after everything else (so to errors too, and to the 503 that replaces a
response whose audit row failed); a header a view set itself is kept. An HTML page (the
browser viewer at /audit) gets a full Content-Security-Policy on top: only the app's own
scripts, styles and images, no inline script or style at all, data from this origin only, and
Trusted Types with no policy, so no script can hand a string to innerHTML or the like.

Sessions: none. Every request proves itself with its token and the page keeps its token in
sessionStorage, so no cookie is read or set (Flask's default would also build a signing
serializer on every request to look for one).

Requests: a body that is not JSON, sent to a route that reads a JSON body, is refused with 415
before the view runs (a form-encoded login must not turn into "invalid credentials", nor a
form-encoded user into "missing fields"). A body over MAX_CONTENT_LENGTH is refused with 413 up
front. Werkzeug alone would
refuse it only when a view reads the body, and a login with HTTP Basic reads none: its
password would be checked (and counted) first. A chunked body declares no length, so it is
read here, at most MAX_CONTENT_LENGTH + 1 bytes of it, and handed to the view as a body of
known length.
"""

import io

from flask import Flask, Response, current_app, request
from flask.sessions import SessionInterface
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

SECURITY_HEADERS = {
    # Tokens, users and audit rows must not stay in a browser's or a proxy's cache.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # OWASP REST Security Cheat Sheet: no framing of API responses.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
PAGE_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
HTML_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    # The page's URLs carry filters, never a token; other sites need not see them either way.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class NoSessions(SessionInterface):
    """`flask.session` is Flask's NullSession: reading it gives nothing, writing it fails."""

    def open_session(self, app, request):
        return None

    def save_session(self, app, session, response) -> None:
        pass


def init_app(app: Flask) -> None:
    """Register all three on `app`; call before the blueprints, so that these run outermost."""
    app.session_interface = NoSessions()
    app.before_request(refuse_oversized_body)
    app.before_request(refuse_non_json_body)
    app.after_request(add_security_headers)


def refuse_oversized_body() -> None:
    """413 for a body over MAX_CONTENT_LENGTH, declared or chunked, before any view runs."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    environ = request.environ
    if limit is None:
        return
    if environ.get("CONTENT_LENGTH"):
        if (request.content_length or 0) > limit:
            raise RequestEntityTooLarge()
    elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        read_chunked_body(environ, limit)


def refuse_non_json_body() -> None:
    """415 for a body that is not JSON (by its Content-Type) sent to a route that reads JSON."""
    if (media_type := non_json_body()) is not None:
        raise UnsupportedMediaType(
            f"The body must be JSON, sent as Content-Type: application/json; it is {media_type}."
        )


def non_json_body() -> str | None:
    """The media type of this request's body when its route reads a JSON body (APIFairy's
    `@body`) and the body is not JSON; None otherwise, and for no body at all."""
    view = current_app.view_functions.get(request.endpoint)
    body = getattr(view, "_spec", {}).get("body")
    if body is None or body[1] != "json" or not request.content_length or request.is_json:
        return None
    return request.mimetype or "of no declared type"


def read_chunked_body(environ: dict, limit: int) -> None:
    """Read a chunked body whole, or 413 once it passes `limit` bytes; the view then reads it
    as a body of known length.

    Not Werkzeug's limited stream: its read() stops at the limit without a word, so a view
    would parse the first `limit` bytes of a longer body as if they were all of it."""
    stream, body = environ["wsgi.input"], bytearray()
    while len(body) <= limit:
        data = stream.read(limit + 1 - len(body))
        if not data:
            break
        body += data
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    del environ["HTTP_TRANSFER_ENCODING"]


def add_security_headers(response: Response) -> Response:
    """SECURITY_HEADERS (and HTML_HEADERS on a page), unless the response has its own value."""
    headers = response.headers
    present = {name.lower() for name in headers.keys()}  # one pass, not a lookup per header
    pages = HTML_HEADERS.items() if response.mimetype == "text/html" else ()
    for name, value in (*pages, *SECURITY_HEADERS.items()):
        if name.lower() not in present:
            headers.add(name, value)
            present.add(name.lower())
    return response
