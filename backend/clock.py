"""The one clock: timezone-aware UTC, which tests can move."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)
_stopped: datetime | None = None


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return (_stopped or datetime.now(UTC)) + _offset


@contextmanager
def stopped() -> Iterator[None]:
    """Run the block with the clock stopped where it is (`moved` still moves it): for tests
    whose answer counts the seconds between two requests, which a slow machine would change."""
    global _stopped
    _stopped = utcnow() - _offset
    try:
        yield
    finally:
        _stopped = None


@contextmanager
def moved(by: timedelta) -> Iterator[None]:
    """Run the block with the clock moved by `by` (tests use it to expire tokens)."""
    global _offset
    _offset += by
    try:
        yield
    finally:
        _offset -= by


def rfc3339(moment: datetime) -> str:
    """`2026-11-21T10:00:00.123456Z`: UTC, always with microseconds, as CONTRACT.md writes it."""
    # isoformat: a third faster than strftime, and the export formats every row's time.
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
