"""The `syslog` sink: RFC 5424 messages over TCP with octet-counting framing (RFC 6587 3.4.1),
optionally in TLS (RFC 5425) with the CA of `ca_file`.

Each row is one message: PRI from the sink's facility and the row's level, TIMESTAMP the row's
`created_at`, MSGID its event, the row's `id`, `event_id` and `hash` in STRUCTURED-DATA (under
32473, the enterprise number RFC 5612 reserves for examples), and the row as JSON in MSG.
Hand-written (forty lines): Python's SysLogHandler writes neither RFC 5424 nor this framing,
and the tests check it against rsyslog's own parser.

Plain syslog over TCP has no acknowledgement, so before each batch the connection is checked
for an end the receiver sent (a stopped rsyslog closes it): a batch is never written into a
connection that is known to be gone.
"""

import functools
import select
import socket
import ssl

from backend.relay.sinks import SinkError

SEVERITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
APP_NAME = "flask-audit-trail"
SD_ID = "audit@32473"
HOSTNAME = (socket.gethostname() or "-")[:255]


@functools.lru_cache(maxsize=4096)  # a trail has a few hundred event names: one pass each
def header_name(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` characters, `-` if
    empty (RFC 5424 6.2)."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in (value or ""))[:limit]
    return text or "-"


# What a message needs of its row besides the JSON text (read beside it: no JSON is parsed).
FIELDS = ("level", "created_at", "event", "event_id", "hash")


def message(row: tuple, facility: int) -> bytes:
    """One row (id, JSON text, *FIELDS) as an RFC 5424 message with its octet count in front.
    `id`, `event_id` and `hash` need no escaping: a number, a UUID, hex digits."""
    row_id, line, level, created_at, event, event_id, digest = row
    priority = facility * 8 + SEVERITIES.get(level, 5)
    text = (
        f"<{priority}>1 {created_at} {HOSTNAME} {APP_NAME} - {header_name(event, 32)}"
        f' [{SD_ID} id="{row_id}" event_id="{event_id}" hash="{digest}"] {line}'
    ).encode()
    return b"%d %s" % (len(text), text)


class SyslogSink:
    """Sends batches to a syslog receiver over one kept TCP (or TLS) connection."""

    fields = FIELDS

    def __init__(self, host, port, tls, ca_file, server_name, facility, timeout):
        self.address = (host, port)
        self.tls = tls
        self.ca_file = ca_file
        self.server_name = server_name
        self.facility = facility
        self.timeout = timeout
        self._socket: socket.socket | None = None

    def deliver(self, rows: list[tuple]) -> None:
        """Write every row's message; SinkError when the connection fails."""
        data = b"".join([message(row, self.facility) for row in rows])
        where = f"{self.address[0]}:{self.address[1]}"
        try:
            if self._socket is not None and _ended(self._socket):
                self.close()
            if self._socket is None:
                self._socket = self._connect()
            self._socket.sendall(data)
        except (OSError, ssl.SSLError) as error:
            self.close()
            raise SinkError(f"{where}: {error}") from error

    def close(self) -> None:
        """Close the connection."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _connect(self) -> socket.socket:
        connection = socket.create_connection(self.address, timeout=self.timeout)
        if not self.tls:
            return connection
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            return context.wrap_socket(connection, server_hostname=self.server_name)
        except (OSError, ssl.SSLError):
            connection.close()
            raise


def _ended(connection: socket.socket) -> bool:
    """Whether the receiver closed the connection (a syslog receiver never sends otherwise)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1) == b""
    except (OSError, ssl.SSLError):
        return True
