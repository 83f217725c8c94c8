"""WSGI entry point: `gunicorn wsgi:app`; also what `flask` finds without FLASK_APP."""

import sys

from backend import create_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"configuration error: {error}")
