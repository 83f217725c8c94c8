"""GET /docs: the API reference, Swagger UI rendered from /v1/openapi.json.

Swagger UI's files come from the swagger-ui-py package (which ships Swagger UI's release
files, kept current by its maintainers) and are served by the app itself from /docs/assets:
the page loads nothing from elsewhere. The page's own script (static/docs.js) starts Swagger UI
with the document's URL, read from the page, so the page carries no inline script.

Swagger UI sets HTML from the document's Markdown (sanitised with DOMPurify) and draws its
icons as `data:` images, so this page's policy allows `data:` images and does without the
viewer's Trusted Types; it is otherwise the viewer's: the app's own scripts and styles only.
"""

from importlib.resources import files

from flask import Response, abort, make_response, render_template, request, send_from_directory

from backend.main import bp
from backend.main.views import SERVICE, service_version
from backend.signals import announce, main_log

TEMPLATE = "docs.html"
SWAGGER_UI = files("swagger_ui") / "static"
# The release files the page loads; nothing else of the package's folder is served.
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE")
DOCS_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


@bp.get("/docs")
def docs_page() -> Response:
    """The API reference: every route of /v1/openapi.json, with Swagger UI."""
    page = render_template(TEMPLATE, service=SERVICE, version=service_version())
    announce(
        main_log,
        "docs.view",
        level="INFO",
        status=200,
        track=f"{request.method} {request.path} -> {TEMPLATE}",
    )
    response = make_response(page)
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """One of Swagger UI's release files (not audited, as the viewer's static files are not)."""
    if name not in ASSETS:
        abort(404)
    return send_from_directory(SWAGGER_UI, name, max_age=3600)
