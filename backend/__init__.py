"""Flask audit trail: a REST API whose every security-relevant act leaves an audit row.

`create_app()` builds the app; importing this package does no work, and imports neither
Flask nor SQLAlchemy: gunicorn's master imports it (for backend.gunicorn_conf), and each gevent
worker must monkey-patch the standard library before those are imported (gunicorn_conf).
"""

# (This docstring is the OpenAPI document's description, through apifairy.) The serving code
# stays at this package's top level, not in a `serving/` package: boot.py (migrate, admin, exec
# gunicorn), gunicorn_conf.py (gunicorn's settings) and concurrency.py (living with gevent
# workers). Moving them would change every import of them, and the paths that the Dockerfile,
# the Makefile and the docs name, for no reader's gain.

from __future__ import annotations

from typing import TYPE_CHECKING

import config

if TYPE_CHECKING:
    from flask import Flask


def create_app(settings: dict | None = None) -> Flask:
    """Build the app from `settings` (default: `config.settings()` of the environment)."""
    from flask import Flask

    from backend import hardening, log_format

    if settings is None:
        settings = config.settings()
    app = Flask(__name__, instance_path=settings["INSTANCE_PATH"])
    app.config.from_mapping(settings)
    app.json.sort_keys = False
    app.json.mimetype = "application/json; charset=utf-8"
    log_format.init_app(app)
    register_proxy_fix(app)
    register_extensions(app)
    register_request_hooks(app)
    hardening.init_app(app)
    register_blueprints(app)
    register_commands(app)
    return app


def dispose_engines(app: Flask, close: bool = True) -> None:
    """Close every pooled database connection of `app`: the request engine's and the audit
    writer's (the boot does before it hands over to gunicorn; tests end with it). close=False
    forgets them without closing them, as a forked process must for its parent's; the
    writer's group-commit line starts empty either way."""
    from backend.extensions import db

    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=close)
    app.extensions["audit_writer"].forget_connections(close=close)
    app.extensions["audit_reads"].dispose(close=close)


def register_proxy_fix(app: Flask) -> None:
    """Trust X-Forwarded-For/-Proto from exactly TRUSTED_PROXY_HOPS proxies, and no one else."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


def register_extensions(app: Flask) -> None:
    import sqlalchemy as sa

    from backend import roles
    from backend.audit import reads, writer
    from backend.db_types import discard_closed_connections, on_this_database, sqlite_pragmas
    from backend.extensions import apifairy, db, ma, migrate

    app.config.setdefault("APIFAIRY_TITLE", "Flask audit trail")
    app.config.setdefault("APIFAIRY_VERSION", "1")
    app.config.setdefault("APIFAIRY_APISPEC_PATH", "/v1/openapi.json")
    app.config.setdefault("APIFAIRY_UI_PATH", None)  # its UI loads scripts from a CDN
    roles.add_owner_bind(app)
    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=str(config.ROOT / "migrations"),
        render_as_batch=True,
        include_object=on_this_database,
    )
    ma.init_app(app)
    apifairy.init_app(app)
    with app.app_context():
        for engine in db.engines.values():  # the app's, and the owner's (backend/roles.py)
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", sqlite_pragmas)
            discard_closed_connections(engine)
    writer.init_app(app)
    reads.init_app(app)


def register_request_hooks(app: Flask) -> None:
    # Registered before the blueprints so that the id is echoed on every response, including
    # the 503 that replaces one whose audit row could not be written.
    from backend import metrics
    from backend.audit.events import assign_request_id, echo_request_id

    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
    metrics.init_app(app)
    # Registered after db.init_app, so it runs before Flask-SQLAlchemy's own teardown.
    app.teardown_appcontext(close_session)


def close_session(_error: BaseException | None = None) -> None:
    """End the request's session, even on a connection the database cut after the response
    was made (a restart): the ROLLBACK of Flask-SQLAlchemy's teardown would raise out of the
    app, and the client would get a dropped connection instead of that response. SQLAlchemy
    has by then invalidated the connection, so closing the session again succeeds."""
    import sqlalchemy as sa

    from backend.extensions import db

    try:
        db.session.remove()
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        db.session.remove()


def register_blueprints(app: Flask) -> None:
    from backend import audit, errors, openapi  # noqa: F401  (openapi completes the document)
    from backend.audit import subscribers  # noqa: F401  (connects the audit receivers)
    from backend.auth import bp as auth_bp
    from backend.main import bp as main_bp
    from backend.v1 import bp as v1_bp

    app.register_blueprint(errors.bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(v1_bp)
    app.register_blueprint(main_bp)


def register_commands(app: Flask) -> None:
    from backend import (
        cli_partitions,  # noqa: F401  (adds `flask audit maintain`)
        cli_tree,  # noqa: F401  (adds `flask audit keys` and `heads`)
        user_commands,  # noqa: F401  (adds list, set-password, ... to users)
    )
    from backend.cli import audit, users

    app.cli.add_command(users)
    app.cli.add_command(audit)
