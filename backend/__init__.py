"""Flask audit trail: a REST API whose every security-relevant act leaves an audit row.

`create_app()` builds the app; importing this package does no work.
"""

import sqlalchemy as sa
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import config


def create_app(settings: dict | None = None) -> Flask:
    """Build the app from `settings` (default: `config.settings()` of the environment)."""
    if settings is None:
        settings = config.settings()
    app = Flask(__name__, instance_path=settings["INSTANCE_PATH"])
    app.config.from_mapping(settings)
    app.json.sort_keys = False
    app.json.mimetype = "application/json; charset=utf-8"
    register_proxy_fix(app)
    register_extensions(app)
    register_request_hooks(app)
    register_blueprints(app)
    register_commands(app)
    return app


def register_proxy_fix(app: Flask) -> None:
    """Trust X-Forwarded-For/-Proto from exactly TRUSTED_PROXY_HOPS proxies, and no one else."""
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


def register_extensions(app: Flask) -> None:
    from backend.extensions import apifairy, db, ma, migrate

    app.config.setdefault("APIFAIRY_TITLE", "Flask audit trail")
    app.config.setdefault("APIFAIRY_VERSION", "1")
    app.config.setdefault("APIFAIRY_APISPEC_PATH", "/v1/openapi.json")
    app.config.setdefault("APIFAIRY_UI_PATH", None)  # its UI loads scripts from a CDN
    db.init_app(app)
    migrate.init_app(app, db, directory=str(config.ROOT / "migrations"), render_as_batch=True)
    ma.init_app(app)
    apifairy.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            sa.event.listen(db.engine, "connect", _sqlite_pragmas)


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    # WAL lets readers and the audit writer's own connection work side by side.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLite's own lower() folds ASCII only, so ILIKE (lower(x) LIKE lower(y) on SQLite) would
    # miss "Ü" for "ü"; PostgreSQL folds every letter. Python's str.lower does too.
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def register_request_hooks(app: Flask) -> None:
    # Registered before the blueprints so that the id is echoed on every response, including
    # the 503 that replaces one whose audit row could not be written.
    from backend.audit.events import assign_request_id, echo_request_id

    app.before_request(assign_request_id)
    app.after_request(echo_request_id)


def register_blueprints(app: Flask) -> None:
    from backend import audit, errors  # noqa: F401
    from backend.audit import subscribers  # noqa: F401  (connects the audit receivers)
    from backend.auth import bp as auth_bp
    from backend.main import bp as main_bp
    from backend.v1 import bp as v1_bp

    app.register_blueprint(errors.bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(v1_bp)
    app.register_blueprint(main_bp)


def register_commands(app: Flask) -> None:
    from backend.cli import audit, users

    app.cli.add_command(users)
    app.cli.add_command(audit)
