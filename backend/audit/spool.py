"""The local spool: where an event waits when the database cannot take it.

An append-only file of JSON lines under instance/, each line fsync'd before the request may
answer. Every process on the machine shares it under an exclusive `flock`. Events leave it
only after the database has committed them, and they carry their `event_id`, so a replay
interrupted after the commit (or a write that committed although the driver reported an
error) is not written twice.
"""

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from backend.audit.events import FIELDS, AuditEvent
from backend.concurrency import OffTheLoop
from backend.models import AUDIT_FIELDS

logger = logging.getLogger(__name__)
# A process's writes take turns already (group_commit.GroupCommit); /readyz counts the spool too.
_waiting = OffTheLoop(4)


def encode(event: AuditEvent) -> bytes:
    """One JSON line for the event."""
    row = event.as_row()
    row["created_at"] = row["created_at"].isoformat()
    row["event_id"] = str(row["event_id"])
    return json.dumps(row, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> AuditEvent:
    """The event a line of the spool holds; ValueError, KeyError or TypeError if it holds none
    (a value of the wrong type would fail in the driver, not in the database, as an outage)."""
    row = json.loads(line)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    if row["created_at"].tzinfo is None:
        raise ValueError("a naive created_at")
    row["event_id"] = uuid.UUID(row["event_id"])
    for name, kind in _JSON_TYPES.items():
        if not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
            raise TypeError(f"{name} is not a {kind}")
    return AuditEvent(**{name: row[name] for name in FIELDS if name in row})


# What each other field of an event may be in JSON: its column's type, or null where it may be.
_JSON_TYPES = {
    spec.name: (spec.type.python_type, type(None)) if spec.nullable else (spec.type.python_type,)
    for spec in AUDIT_FIELDS
    if spec.name in FIELDS and spec.name not in ("created_at", "event_id")
}


class Spool:
    """The spool file at `path`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def pending(self) -> bool:
        """True when events are waiting (a stat, cheap enough to ask on every write)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, *events: AuditEvent) -> None:
        """Add the events durably (written and fsync'd once), or raise OSError."""
        with self._locked() as file:
            file.write(b"".join(encode(event) for event in events))
            file.flush()
            os.fsync(file.fileno())

    def count(self) -> int:
        """How many events are waiting."""
        if not self.pending():
            return 0
        with self._locked() as file:
            return sum(1 for line in file if line.strip())

    @contextmanager
    def draining(self) -> Iterator["Drain"]:
        """Hold the spool while its events are written elsewhere.

        The caller gets the waiting events; calling `drain.done()` after they are committed
        empties the spool.
        """
        with self._locked() as file:
            events = []
            for line in file:
                try:
                    events.append(decode(line))
                except (ValueError, KeyError, TypeError):
                    self._set_aside(line)
            yield Drain(file, events)

    @property
    def rejected_path(self) -> Path:
        """The file beside the spool where what the database cannot take is kept for a person."""
        return self.path.with_name(self.path.name + ".rejected")

    def set_aside(self, event: AuditEvent) -> None:
        """Keep an event the database refused in the rejected file, durably (or OSError), as
        a spool line: once fixed, a person can append it to the spool and replay it."""
        self._keep_rejected(encode(event))

    def _set_aside(self, line: bytes) -> None:
        # A line cut short by a crash mid-append: its request never got an answer, so nothing
        # was promised; keep the bytes for a person, out of the way of the replay.
        if not line.strip():
            return
        logger.error("audit spool: setting aside an unreadable line (%d bytes)", len(line))
        self._keep_rejected(line if line.endswith(b"\n") else line + b"\n")

    def _keep_rejected(self, line: bytes) -> None:
        # Owner-only, like the spool: it holds what clients sent. One write of O_APPEND, so
        # processes that set events aside at once never interleave their lines.
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.write(fd, line) != len(line):
                raise OSError("a short write: the disk is full")
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _locked(self) -> Iterator:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if created:  # the new directory entry must survive a crash too
            _fsync_directory(self.path.parent)
        with os.fdopen(fd, "r+b") as file:
            # Another process may hold it for as long as a database write takes (a replay):
            # in a gevent worker, wait on a real thread, not the one of every request.
            _waiting(fcntl.flock, file.fileno(), fcntl.LOCK_EX)
            try:
                file.seek(0)
                yield file
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Drain:
    """The spool held by `Spool.draining`: its events, and how to empty it."""

    def __init__(self, file, events: list[AuditEvent]):
        self.file = file
        self.events = events

    def done(self) -> None:
        """The events are committed elsewhere: empty the spool."""
        self.file.truncate(0)
        self.file.flush()
        os.fsync(self.file.fileno())
