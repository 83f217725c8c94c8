"""The service's front door: what it is, whether it is alive and ready, and the audit trail in
a browser (a page at /audit, with its script, style sheet and icon served from /audit/static)."""

from flask import Blueprint

bp = Blueprint(
    "main",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/audit/static",
)

from backend.main import metrics, page, views  # noqa: E402,F401  (registers the routes)
