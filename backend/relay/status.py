"""What the service says of its sinks (`GET /v1/sinks`, `/readyz`, `/metrics`): each sink of
AUDIT_SINKS_FILE with its cursor, how far behind the trail it is, and the relay's last word.

The relay writes its state into the cursor's row at least every HEARTBEAT_SECONDS while it
runs; a row older than STALE_SECONDS means no relay is delivering the sink (`stopped`).
"""

from datetime import timedelta

import sqlalchemy as sa

from backend.audit.follow import newest_id
from backend.clock import utcnow
from backend.models import SinkCursor
from backend.relay.config import SinkConfig
from backend.relay.runner import HEARTBEAT_SECONDS

# Longer than the relay's longest quiet spell: a heartbeat, or a failing sink's backoff cap.
STALE_SECONDS = max(6 * HEARTBEAT_SECONDS, 60.0)


def sink_statuses(connection: sa.Connection, sinks: list[SinkConfig]) -> list[dict]:
    """One dict a configured sink: name, kind, delivered_id, lag (ids behind the newest
    committed row), state (`running`, `failing` or `stopped`), last_error, failures."""
    newest = newest_id(connection)
    cursors = {
        cursor.name: cursor
        for cursor in connection.execute(sa.select(SinkCursor.__table__)).mappings()
    }
    stale_before = utcnow() - timedelta(seconds=STALE_SECONDS)
    statuses = []
    for sink in sinks:
        cursor = cursors.get(sink.name)
        delivered = cursor["delivered_id"] if cursor else 0
        running = cursor is not None and cursor["seen_at"] >= stale_before
        statuses.append(
            {
                "name": sink.name,
                "kind": sink.kind,
                "delivered_id": delivered,
                "lag": max(newest - delivered, 0),
                "state": cursor["state"] if running else "stopped",
                "last_error": cursor["last_error"] if cursor else None,
                "failures": cursor["failures"] if cursor else 0,
            }
        )
    return statuses
