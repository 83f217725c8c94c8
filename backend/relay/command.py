"""`flask audit relay`: deliver the trail to the sinks of AUDIT_SINKS_FILE until stopped."""

import signal
import threading

import click
from flask import current_app
from flask.cli import with_appcontext

from backend.extensions import db
from backend.relay.config import SinksFileError, load_sinks
from backend.relay.records import RelayRecorder
from backend.relay.runner import POLL_SECONDS, relay


def configured_sinks():
    """The sinks of AUDIT_SINKS_FILE ([] when it is unset); SinksFileError when it is bad."""
    path = current_app.config["AUDIT_SINKS_FILE"]
    return load_sinks(path) if path else []


@click.command("relay")
@click.option("--once", is_flag=True, help="Deliver what is there, then exit.")
@click.option(
    "--poll",
    type=click.FloatRange(0.01, 60),
    default=POLL_SECONDS,
    show_default=True,
    help="Seconds between looks for new rows once caught up.",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="The longest wait, in seconds, between attempts at a failing sink.",
)
@with_appcontext
def relay_command(once: bool, poll: float, max_backoff: float) -> None:
    """Deliver the trail to the sinks of AUDIT_SINKS_FILE, at least once and in id order.

    Runs until SIGTERM or SIGINT, writing its own rows (relay.start, relay.stop, sink.failing,
    sink.recovered). With --once, without them, until every sink has caught up (exit 1 when
    one fails five times in a row, or is another relay's, naming it). A second
    relay started at the same time waits as a hot spare: each sink is delivered by one relay.
    """
    try:
        sinks = configured_sinks()
    except SinksFileError as error:
        raise click.ClickException(str(error)) from None
    if not sinks:
        raise click.ClickException("AUDIT_SINKS_FILE names no sink: nothing to relay")
    stop = threading.Event()
    if not once:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
    names = ", ".join(f"{sink.name} ({sink.kind})" for sink in sinks)
    click.echo(f"relaying to {names}", err=True)
    # The long-running relay is part of the service and writes its own rows; --once is a
    # delivery run by hand, told by its exit status.
    recorder = None if once else RelayRecorder(current_app._get_current_object())
    behind = relay(
        db.engine, sinks, stop, once=once, poll=poll, backoff_cap=max_backoff, recorder=recorder
    )
    if behind:
        raise click.ClickException(f"not caught up: {', '.join(behind)}")
