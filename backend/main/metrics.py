"""GET /metrics: Prometheus' text format, for a scraper holding METRICS_TOKEN."""

from apifairy import other_responses
from flask import Response, current_app
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound

from backend import metrics
from backend.errors import error_response
from backend.extensions import db
from backend.main import bp
from backend.relay.command import configured_sinks
from backend.relay.config import SinksFileError
from backend.relay.status import sink_statuses
from backend.schemas import ErrorSchema


@bp.get("/metrics")
@other_responses(
    {
        200: "Prometheus text format",
        401: (ErrorSchema, "No `Authorization: Bearer <METRICS_TOKEN>`"),
        404: (ErrorSchema, "METRICS_TOKEN is unset: no metrics are served"),
    }
)
def metrics_view():
    """The service's metrics, for Prometheus

    Audit rows written (by source and level), the durable write's latency, group-commit batch
    sizes, spooled events, lockouts, responses by status, and each sink's lag and failures.
    Needs `Authorization: Bearer <METRICS_TOKEN>`; a 404 while METRICS_TOKEN is unset. Never
    audited (a scraper calls it every few seconds).
    """
    if not current_app.config["METRICS_TOKEN"]:
        raise NotFound()
    if not metrics.authorized():
        return error_response(
            401,
            "GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`.",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = metrics.exposition(metrics.SinkCollector(_sink_statuses()))
    return Response(body, content_type=metrics.CONTENT_TYPE)


def _sink_statuses() -> list[dict]:
    """The sinks' statuses, or none when the file or the database cannot say (the service's
    own metrics are worth serving still)."""
    try:
        sinks = configured_sinks()
        if not sinks:
            return []
        with db.engine.connect() as connection:
            return sink_statuses(connection, sinks)
    except (SinksFileError, SQLAlchemyError):
        return []
