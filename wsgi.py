"""WSGI entry point: `gunicorn wsgi:app`; also what `flask` finds without FLASK_APP."""

import sys

from backend import create_app
from config import ConfigError

# gunicorn's "application failed to load": its master stops instead of respawning workers
# that can never start. `flask` simply exits with it.
APP_LOAD_ERROR = 4

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(APP_LOAD_ERROR)
