"""`flask audit maintain`: the trail's partitions for the months ahead (PostgreSQL), run at
boot and from cron or beside the relay; idempotent, and safe to run twice at once."""

import click
import sqlalchemy as sa
from flask import current_app

from backend.audit import partitions
from backend.cli import TRAIL, audit, record_cli
from backend.clock import utcnow
from backend.database_state import first_line
from backend.roles import owner_engine

# The longest wait for a lock: attaching a month locks the default partition for a moment,
# and readers queue behind a waiting ATTACH. Better to try again at the next run.
LOCK_TIMEOUT = "2s"


@audit.command("maintain")
def maintain_command() -> None:
    """Make the trail's monthly partitions: this month's and AUDIT_PARTITIONS_AHEAD more."""
    ahead = current_app.config["AUDIT_PARTITIONS_AHEAD"]
    try:
        with owner_engine().begin() as connection:
            if not partitions.is_partitioned(connection):
                done = None
            else:
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                done = partitions.maintain(connection, utcnow(), ahead)
    except sa.exc.DBAPIError as error:
        reason = first_line(error)
        record_cli(
            "cli.audit.maintain",
            track=f"partitions not made: {reason}",
            level="WARNING",
            outcome="error",
            target=TRAIL,
        )
        raise click.ClickException(f"partitions not made (run it again): {reason}") from None
    summary = _summary(done, ahead)
    record_cli(
        "cli.audit.maintain",
        track=summary,
        level="WARNING" if done and done.kept_in_default else "INFO",
        target=TRAIL,
        details={"made": done.made if done else [], "ahead": ahead},
    )
    click.echo(summary)


def _summary(done: partitions.Maintenance | None, ahead: int) -> str:
    if done is None:
        return "the trail is one plain table here (SQLite): no partitions to make"
    said = f"made {', '.join(done.made)}" if done.made else "nothing to make"
    said += f" (this month and {ahead} ahead)"
    if done.kept_in_default:
        said += (
            f"; not made, their rows are in {partitions.DEFAULT}: {', '.join(done.kept_in_default)}"
        )
    return said
