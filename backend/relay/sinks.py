"""What every sink kind offers the relay, and the kinds by name."""

from typing import Protocol

from backend.relay.config import SinkConfig


class SinkError(Exception):
    """The sink did not take a batch (down, refused, timed out); the relay retries it."""


class Sink(Protocol):
    """A destination: `deliver` returns only once the sink has every row of the batch."""

    # Fields of the row the sink needs beside its JSON text (read as text by the database).
    fields: tuple[str, ...]

    def deliver(self, rows: list[tuple]) -> None:
        """Send rows (id, JSON text, *fields) in order; raise SinkError when they were not
        taken."""

    def close(self) -> None:
        """Let go of connections and files."""


def open_sink(config: SinkConfig) -> Sink:
    """The sink that `config` describes (nothing is connected before the first batch)."""
    from backend.relay.file_sink import FileSink
    from backend.relay.syslog import SyslogSink
    from backend.relay.webhook import WebhookSink

    kinds = {"file": FileSink, "webhook": WebhookSink, "syslog": SyslogSink}
    return kinds[config.kind](**config.settings)
