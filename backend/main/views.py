"""GET /, /healthz and /readyz."""

from functools import cache
from importlib.metadata import version

import sqlalchemy as sa
from apifairy import other_responses
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from backend.audit.reads import reads
from backend.audit.writer import writer
from backend.database_state import migration_heads
from backend.errors import error_response
from backend.extensions import db
from backend.main import bp
from backend.relay.command import configured_sinks
from backend.relay.config import SinksFileError
from backend.relay.status import sink_statuses
from backend.schemas import ErrorSchema, HealthSchema, IndexSchema, ReadySchema
from backend.signals import announce, main_log
from backend.urls import external_url

SERVICE = "flask-audit-trail"


@bp.get("/")
@other_responses({200: (IndexSchema, "The service and its links")})
def index():
    """The service's name, version and where its API is."""
    announce(main_log, "index.view", level="DEBUG", status=200, track="GET /")
    return {
        "service": SERVICE,
        "version": service_version(),
        "links": {
            "login": external_url("auth.login"),
            "logout": external_url("auth.logout"),
            "me": external_url("v1.me"),
            "logs": external_url("v1.logs"),
            "openapi": external_url("apifairy.json"),
            "docs": external_url("main.docs_page"),
            "viewer": external_url("main.audit_page"),
            "health": external_url("main.healthz"),
            "ready": external_url("main.readyz"),
        },
    }


@bp.get("/healthz")
@other_responses({200: (HealthSchema, "The process serves")})
def healthz():
    """Liveness: the process serves. Touches no database, and is never audited."""
    return {"status": "ok"}


@bp.get("/readyz")
@other_responses(
    {
        200: (ReadySchema, "Ready to serve"),
        503: (ErrorSchema, "The database does not answer or is not at the latest migration"),
    }
)
def readyz():
    """Readiness: the database answers and its schema is at the latest migration; else 503.

    A standby that is down (DATABASE_REPLICA_URL) does not make the instance unready, as
    reads of the trail then go to the primary; the answer says where they go."""
    try:
        with db.engine.connect() as connection:
            current = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            revisions = set(current.scalars())
    except SQLAlchemyError:
        return error_response(503, "The database does not answer, or has no schema yet.")
    heads = migration_heads(current_app.extensions["migrate"].directory)
    if revisions != heads:
        return error_response(
            503,
            f"The schema is at {', '.join(sorted(revisions)) or 'nothing'},"
            f" not the latest migration {', '.join(sorted(heads))}:"
            " run `flask db upgrade`.",
        )
    # Events spooled while the database was away are replayed by the next write; a load
    # balancer need not take the instance out for them, but operators want to see them.
    return {
        "status": "ready",
        "migration": ", ".join(sorted(heads)),
        "spooled_events": writer().spool.count(),
        **reads_state(),
        **sinks_lag(),
    }


def reads_state() -> dict:
    """Where reads of the trail go now, and the standby's state (backend/audit/reads.py)."""
    trail_reads = reads()
    if not trail_reads.configured:
        return {"reads": "primary", "standby": "not configured"}
    on_standby = trail_reads.engine_for(db.engine) is trail_reads.engine
    return {
        "reads": "standby" if on_standby else "primary",
        "standby": "up" if on_standby else "down",
    }


def sinks_lag() -> dict:
    """`{"sinks": [{name, state, lag}]}` for /readyz when the relay has sinks (nothing else:
    /readyz answers anyone). A sink behind, or a bad sinks file, never makes us unready."""
    try:
        sinks = configured_sinks()
        if not sinks:
            return {}
        with db.engine.connect() as connection:
            statuses = sink_statuses(connection, sinks)
    except (SinksFileError, SQLAlchemyError):
        return {}
    shown = ("name", "state", "lag")
    return {"sinks": [{key: status[key] for key in shown} for status in statuses]}


@cache
def service_version() -> str:
    """The installed package's version (read once: it does not change while we run)."""
    return version(SERVICE)
