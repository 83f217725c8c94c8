"""WSGI entry point: `gunicorn wsgi:app`; also what `flask` finds without FLASK_APP."""

import sys

from backend import create_app, database_state
from config import APP_LOAD_ERROR, ConfigError

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(APP_LOAD_ERROR)
# A `flask` command or the boot that meets an unreachable or unmigrated database ends with one
# line saying so and what to do (backend/database_state.py), not a traceback.
database_state.install(app)
