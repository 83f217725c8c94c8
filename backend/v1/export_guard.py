"""Bounds on GET /v1/logs/export, which holds a pooled database connection (on PostgreSQL, a
COPY in an open transaction) for as long as its client takes to read the file.

Unbounded, 48 connections that asked for an export and read nothing held 40 PostgreSQL
sessions, and every other request waited POOL_TIMEOUT seconds for a connection and got a 503.
So, in each worker process:

- ExportSlots: at most EXPORTS_PER_USER exports of one user and EXPORTS_PER_WORKER of all
  users run at once (config.py keeps the latter under DATABASE_POOL_SIZE: other requests always
  find a connection); one more is a 429 with Retry-After, before any connection is taken.
- GuardedExport: the file leaves in pieces of at most PIECE bytes, and a client that keeps the
  server waiting EXPORT_STALL_TIMEOUT seconds to take one is cut off. Its socket is shut, so the
  server's blocked write fails and it closes the response, which closes the stream: the
  connection and its transaction are released.

Every export ends with a `trail.export` row written when its stream is closed (ReadEnd, which
the live stream's `trail.stream` row uses too): the rows sent (whole chunks the server took),
its filters, and whether it was complete, the client left early (`failure`) or was cut off
(`denied`, at WARNING).
"""

import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from flask import current_app, request
from werkzeug.exceptions import TooManyRequests

from backend.audit.events import request_fields
from backend.audit.group_commit import AuditUnavailable
from backend.models import User
from backend.signals import Target, announce, v1_log
from backend.v1 import bp

logger = logging.getLogger(__name__)

# How much the server is handed at a time: a client must take this much in
# EXPORT_STALL_TIMEOUT seconds (64 KiB in 30 s: 2 KiB/s) not to count as reading nothing.
PIECE = 64 * 1024
# An export lasts seconds to minutes; a client that retries sooner is refused again.
RETRY_AFTER = 5


class ExportsBusy(TooManyRequests):
    """429 with Retry-After: as many exports as the bounds allow are running."""


class ExportSlots:
    """The exports running in this process, per user: a slot is taken before the export's
    connection, and given back when its response is closed."""

    def __init__(self, per_user: int, per_worker: int):
        self.per_user = per_user
        self.per_worker = per_worker
        self._running: Counter[int] = Counter()
        # Reentrant: GuardedExport.__del__ gives a slot back wherever the collector runs.
        self._lock = threading.RLock()

    def take(self, user: User) -> Callable[[], None]:
        """A slot for one export of `user`, as the function that gives it back (once; later
        calls do nothing); ExportsBusy if a bound is reached."""
        with self._lock:
            if self._running[user.id] >= self.per_user:
                raise ExportsBusy(
                    f"You have {self.per_user} exports running; wait for one to finish.",
                    retry_after=RETRY_AFTER,
                )
            if self._running.total() >= self.per_worker:
                raise ExportsBusy(
                    "Too many exports are running; try again shortly.", retry_after=RETRY_AFTER
                )
            self._running[user.id] += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if not given_back.is_set():
                    given_back.set()
                    self._running[user.id] -= 1

        return give_back


@bp.record_once
def _make_slots(state) -> None:
    config = state.app.config
    state.app.extensions["export_slots"] = ExportSlots(
        config["EXPORTS_PER_USER"], config["EXPORTS_PER_WORKER"]
    )


def guarded(
    user: User, open_export: Callable[[Callable[[int, int], None]], Iterator[bytes]], details: dict
) -> "GuardedExport":
    """The chunks that `open_export(progress)` makes, within the bounds: a slot of `user`'s
    taken first (ExportsBusy, a 429, if none is free), and the client watched while it reads.
    `progress(last_id, rows)` is called before each chunk (audit.export.stream); `details`
    (the filters, the format) go into the `trail.export` row."""
    give_back = current_app.extensions["export_slots"].take(user)
    chunks = None
    counter = RowCounter()
    try:
        chunks = open_export(counter.chunk)
        return GuardedExport(chunks, give_back, user, counter, details)
    except BaseException:
        try:
            if chunks is not None:
                chunks.close()  # its connection and transaction
        finally:
            give_back()
        raise


class RowCounter:
    """The rows of the chunk about to be sent, and of those the server has taken."""

    def __init__(self):
        self.next_chunk = 0
        self.sent = 0

    def chunk(self, last_id: int, rows: int) -> None:
        self.next_chunk += rows

    def taken(self) -> None:
        self.sent += self.next_chunk
        self.next_chunk = 0


class GuardedExport:
    """A response body (WSGI calls `close` when it is done with it, read whole or not) that cuts
    off a client who keeps the server waiting EXPORT_STALL_TIMEOUT seconds for one piece."""

    _closed = True  # until __init__ has finished: nothing of a half-made one to release

    def __init__(
        self,
        chunks: Iterator[bytes],
        give_back: Callable[[], None],
        user: User,
        counter: RowCounter,
        details: dict,
    ):
        self._chunks = chunks
        self._give_back = give_back
        self._counter = counter
        self._details = details
        self._complete = False
        self._end = ReadEnd("trail.export", user)
        environ = request.environ
        self._watch = StallWatch(
            current_app.config["EXPORT_STALL_TIMEOUT"],
            environ.get("gunicorn.socket") or environ.get("werkzeug.socket"),
        )
        self._sent = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        self._watch.start()
        for chunk in self._chunks:
            for start in range(0, len(chunk), PIECE):
                piece = chunk[start : start + PIECE]
                self._watch.waiting()
                yield piece
                if self._watch.cut_off:  # taken as the watch cut in: the socket is shut anyway
                    return
                self._watch.taken()
                self._sent += len(piece)
            self._counter.taken()
        self._complete = True

    def close(self) -> None:
        """Release the connection and the slot; record the export (once, however often called)."""
        if self._release():
            self._record()

    def __del__(self) -> None:
        # A response dropped unclosed (replaced by the 503 of an audit row that failed) must
        # not keep its connection, its transaction or its user's slot for the life of the worker.
        self._release()

    def _release(self) -> bool:
        """Stop watching, close the chunks (their connection), give the slot back; False when
        that was done already."""
        if self._closed:
            return False
        self._closed = True
        self._watch.stop()
        try:
            self._chunks.close()
        finally:
            self._give_back()
        return True

    def _record(self) -> None:
        rows = self._counter.sent
        sent = f"{rows} row{'' if rows == 1 else 's'} ({self._sent} bytes) sent"
        if self._watch.cut_off:
            seconds = self._watch.seconds
            level, outcome, reason = "WARNING", "denied", "stalled"
            what = f"cut off: the client read nothing for {seconds} s; {sent}"
        elif self._complete:
            level, outcome, reason = "INFO", "success", None
            what = f"complete: {sent}"
        else:
            level, outcome, reason = "INFO", "failure", "client_left"
            what = f"ended early, the client left: {sent}"
        details = {**self._details, "rows": rows, "bytes": self._sent}
        self._end.record(what, level=level, outcome=outcome, reason=reason, details=details)


class ReadEnd:
    """The row that a streamed read of the trail (an export, a live stream) writes when its
    response is over: the request's fields are taken now, while the request is there."""

    def __init__(self, event: str, user: User):
        self.event = event
        self.user = user
        self.app = current_app._get_current_object()
        self.request = request_fields()
        self.track = f"{request.method} {request.full_path.rstrip('?')}"

    def record(self, what: str, **facts) -> None:
        """Write the row (`facts`: announce()'s level, outcome, reason, details), its track
        the request and `what`; logged, not raised, when the trail cannot take it (the
        response is over either way)."""
        track = f"{self.track} {what}"
        with self.app.app_context():
            try:
                announce(
                    v1_log,
                    self.event,
                    status=200,
                    track=track,
                    user=self.user.username,
                    actor_id=self.user.id,
                    target=Target("trail"),
                    request=self.request,
                    **facts,
                )
            except AuditUnavailable:
                logger.error("could not record %s: %s", self.event, track)


class StallWatch:
    """A watcher (a thread; a greenlet in a gevent worker) that shuts `connection` once the
    server has been `waiting` for `seconds` without the piece being `taken`."""

    def __init__(self, seconds: int, connection: socket.socket | None):
        self.seconds = seconds
        self.cut_off = False
        self._connection = connection
        self._waiting_since: float | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Watch from now until `stop`."""
        threading.Thread(target=self._watch, name="export-stall-watch", daemon=True).start()

    def waiting(self) -> None:
        """A piece is with the server, to be sent."""
        self._waiting_since = time.monotonic()

    def taken(self) -> None:
        """The server has handed the piece on and asks for the next."""
        self._waiting_since = None

    def stop(self) -> None:
        """The export is over."""
        self._stopped.set()

    def _watch(self) -> None:
        wait = self.seconds
        while not self._stopped.wait(wait):
            since = self._waiting_since
            waited = 0.0 if since is None else time.monotonic() - since
            if waited >= self.seconds:
                self.cut_off = True
                shut(self._connection)
                return
            wait = self.seconds - waited


def shut(connection: socket.socket | None) -> None:
    """End the client's connection: a write the server is blocked in fails at once, and the
    close that follows resets the connection, dropping what the client never read."""
    if connection is None:  # not served over a socket (the test client): nothing to shut
        return
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # the client went away meanwhile
        pass
