"""GET /audit: the audit trail in a browser.

The page is a shell: Jinja renders only the service's name and the URLs of the API, and the
script (static/audit.js) signs in with `POST /login`, keeps the token in sessionStorage and
reads everything else from `/v1` with it. So the page itself is the same for everyone, needs
no token, and holds no audit data; every value the script shows is set as text, never HTML.

A page view is announced on `main_log` by a receiver of Flask's `template_rendered`: every
template this blueprint renders for a request is a page view, recorded with the template's
name (`audit.html` gives `audit.view`, as `GET /` gives `index.view`).
"""

from pathlib import PurePosixPath

from flask import (
    current_app,
    has_request_context,
    render_template,
    request,
    template_rendered,
    url_for,
)

from backend.extensions import main_log
from backend.main import bp
from backend.main.views import SERVICE, service_version
from backend.models import LEVELS, SOURCES


@bp.get("/audit")
def audit_page():
    """The audit trail in a browser: sign in, browse and filter the rows, chart, export."""
    return render_template("audit.html", service=SERVICE, version=service_version(),
                           levels=LEVELS, sources=SOURCES, urls={
        "login": url_for("auth.login"),
        "logout": url_for("auth.logout"),
        "logs": url_for("v1.logs"),
        "stats": url_for("v1.stats"),
        "export": url_for("v1.export_logs"),
    })


@template_rendered.connect
def announce_page_view(sender, template, context, **extra) -> None:
    """A template of this blueprint rendered for a request is a page view: announce it on
    main_log as `<template>.view`, with the template's name in `track`. Rendered before the
    response leaves, so the row is durable before the page is served (503 if it cannot be)."""
    if not has_request_context() or request.blueprint != bp.name:
        return
    name = PurePosixPath(template.name or "").stem
    main_log.send(current_app._get_current_object(), event=f"{name}.view", level="INFO",
                  status=200, track=f"{request.method} {request.path} -> {template.name}")
