"""WSGI entry point: `gunicorn wsgi:app`; also what `flask` finds without FLASK_APP."""

import sys

from backend import create_app
from config import APP_LOAD_ERROR, ConfigError

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(APP_LOAD_ERROR)
