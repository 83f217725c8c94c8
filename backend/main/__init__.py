"""The service's front door: what it is, and whether it is alive and ready."""

from flask import Blueprint

bp = Blueprint("main", __name__)

from backend.main import views  # noqa: E402,F401  (registers the routes)
