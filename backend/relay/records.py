"""The relay's own rows in the trail (source `system`): what a security team needs to know of
its log delivery. `relay.start` and `relay.stop`; `sink.failing` once when a sink starts to
refuse batches, and `sink.recovered` when it takes one again, with how long it was down and
how many rows it was behind.

Written through the app's writer, like every other row, and then relayed like every other row
(a SIEM learns from the `sink.recovered` row that it missed a stretch). Never one row a retry:
a sink that fails for an hour writes one `sink.failing`, however often it is tried. A failing
database is not a failing sink: the writer's own `audit.spooling` row tells that story.
"""

import os

from flask import Flask

from backend.audit.subscribers import record_service
from backend.relay.config import SinkConfig
from backend.signals import Target


class RelayRecorder:
    """Writes the relay's rows through `app`'s writer (record_service: a trail that cannot take
    one is logged, never raised)."""

    def __init__(self, app: Flask):
        self.app = app
        self.pid = os.getpid()

    def started(self, sinks: list[SinkConfig]) -> None:
        """The relay process starts delivering `sinks`."""
        names = [sink.name for sink in sinks]
        self._write(
            "relay.start",
            f"relay {self.pid} started, delivering {', '.join(names)}",
            target=Target("service", self.pid, "relay"),
            details={"pid": self.pid, "sinks": names},
        )

    def stopped(self, delivered: dict[str, int]) -> None:
        """The relay process stops (SIGTERM, SIGINT); `delivered`: the last row id of each sink
        it delivered (a hot spare's sinks are another relay's)."""
        cursors = ", ".join(f"{name} at {row_id}" for name, row_id in delivered.items())
        self._write(
            "relay.stop",
            f"relay {self.pid} stopped: {cursors}",
            target=Target("service", self.pid, "relay"),
            details={"pid": self.pid, "delivered": delivered},
        )

    def failing(self, sink: SinkConfig, error: str, delivered: int) -> None:
        """`sink` refused a batch after taking the last one (or at its first)."""
        self._write(
            "sink.failing",
            f"sink {sink.name} ({sink.kind}) is failing, retried with backoff: {error}",
            level="ERROR",
            outcome="error",
            target=Target("sink", None, sink.name),
            details={"kind": sink.kind, "error": error, "delivered_id": delivered},
        )

    def recovered(self, sink: SinkConfig, *, down_seconds: float, attempts: int, behind: int):
        """`sink` took a batch again, after `attempts` failed ones over `down_seconds`, with
        `behind` rows waiting for it."""
        seconds = round(down_seconds, 3)
        self._write(
            "sink.recovered",
            f"sink {sink.name} ({sink.kind}) recovered after {seconds} s and {attempts} failed"
            f" attempts, {behind} rows behind",
            level="WARNING",
            target=Target("sink", None, sink.name),
            details={
                "kind": sink.kind,
                "down_seconds": seconds,
                "failed_attempts": attempts,
                "behind": behind,
            },
        )

    def _write(self, event: str, track: str, **facts) -> None:
        record_service(self.app, event, track, **facts)
