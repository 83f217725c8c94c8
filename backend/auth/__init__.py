"""Logging in and out: POST /login gives a bearer token, GET /logout revokes it."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from backend.auth import credentials, views  # noqa: E402,F401  (registers callbacks and routes)
