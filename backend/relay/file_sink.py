"""The `file` sink: NDJSON appended and fsync'd per batch, rotated by size, for a log shipper
(Filebeat, Vector, Fluent Bit) to tail.

Rotation renames (`trail.ndjson` -> `trail.ndjson.1` -> ... up to `keep`), which every shipper
follows. A batch torn by a crash (a last line without its end) is cut off when the file is
opened again: that batch was never recorded as delivered, so it is written again whole.
"""

import os
from pathlib import Path

from backend.relay.sinks import SinkError

TAIL_BLOCK = 64 * 1024


class FileSink:
    """Appends batches to `path`; a batch is durable (fsync) before `deliver` returns."""

    def __init__(self, path: str, max_bytes: int, keep: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None

    fields = ()

    def deliver(self, rows: list[tuple]) -> None:
        """Append the rows, one JSON object a line, and fsync."""
        data = "".join([row[1] + "\n" for row in rows]).encode()
        try:
            if self._fd is None:
                self._fd = self._open()
            size = os.fstat(self._fd).st_size
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as error:
            self.close()
            raise SinkError(f"{self.path}: {error.strerror}") from error

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        _cut_torn_line(fd)
        return fd

    def _rotate(self) -> None:
        self.close()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames survive a crash before the next batch's fsync
        finally:
            os.close(directory)
        self._fd = self._open()


def _cut_torn_line(fd: int) -> None:
    """Truncate the file after its last complete line (a crash may have left half a batch)."""
    end = os.fstat(fd).st_size
    position = end
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
        block = os.pread(fd, position - start, start)
        if position == end and block.endswith(b"\n"):
            return
        newline = block.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        position = start
    os.ftruncate(fd, 0)
