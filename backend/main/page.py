"""GET /audit: the audit trail in a browser.

The page is a shell: Jinja renders only the service's name and the URLs of the API, and the
script (static/audit.js) signs in with `POST /login`, keeps the token in sessionStorage and
reads everything else from `/v1` with it. So the page itself is the same for everyone, needs
no token, and holds no audit data; every value the script shows is set as text, never HTML.

The view announces its page view on `main_log` as `audit.view` (as `GET /` does `index.view`),
once the page is rendered and before it is served: the row is durable before the page leaves
(503 if it cannot be).
"""

from flask import render_template, request, url_for

from backend.main import bp
from backend.main.views import SERVICE, service_version
from backend.models import LEVELS, OUTCOMES, SOURCES
from backend.signals import announce, main_log

TEMPLATE = "audit.html"
# What the since/until inputs take (an HTML pattern: anchored by the browser): a date, or a date
# and a 24-hour time, which the page sends as RFC 3339 in UTC (schemas.RFC3339DateTime).
MOMENT_PATTERN = r"\d{4}-\d\d-\d\d([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?)?"


@bp.get("/audit")
def audit_page():
    """The audit trail in a browser: sign in, browse and filter the rows, chart, export."""
    page = render_template(
        TEMPLATE,
        service=SERVICE,
        version=service_version(),
        levels=LEVELS,
        sources=SOURCES,
        outcomes=OUTCOMES,
        urls={
            "login": url_for("auth.login"),
            "logout": url_for("auth.logout"),
            "logs": url_for("v1.logs"),
            "stats": url_for("v1.stats"),
            "export": url_for("v1.export_logs"),
            "verify": url_for("v1.verify"),
            "stream": url_for("v1.stream_logs"),
        },
        moment_pattern=MOMENT_PATTERN,
    )
    announce(
        main_log,
        "audit.view",
        level="INFO",
        status=200,
        track=f"{request.method} {request.path} -> {TEMPLATE}",
    )
    return page
