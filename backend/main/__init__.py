"""The service's front door: what it is, whether it is alive and ready, the audit trail in a
browser (a page at /audit, with its script, style sheet and icon served from /audit/static),
and the API reference at /docs."""

from flask import Blueprint

bp = Blueprint(
    "main",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/audit/static",
)

from backend.main import docs, metrics, page, views  # noqa: E402,F401  (registers the routes)
