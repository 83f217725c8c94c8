"""The relay's loop (`flask audit relay`): one thread a sink, each reading the trail after its
sink's cursor and delivering it in batches, in id order, at least once.

A batch is read, handed to the sink, and only then is the cursor moved past it (in its own
transaction): a crash between the two sends that batch again, never skips it. While the sink
or the database fails, the thread waits with exponential backoff and full jitter, so a fleet of
relays does not hammer a receiver that comes back. A sink whose lock another relay holds is
left to that relay, and tried again now and then: a second relay is a hot spare.
"""

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from backend.relay import cursors
from backend.relay.config import SinkConfig
from backend.relay.records import RelayRecorder
from backend.relay.sinks import Sink, SinkError, open_sink
from backend.relay.source import BatchReader

# How often an idle relay looks for new rows, and says it is alive (GET /v1/sinks).
POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 5.0
# With --once, a sink that fails this many times in a row is given up (the command exits 1).
ONCE_ATTEMPTS = 5


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base·2ⁿ)]."""

    base: float = 0.1
    cap: float = 30.0
    attempts: int = 0

    def next_wait(self) -> float:
        """The wait before the next attempt, one failure later."""
        ceiling = min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        """A success: the next failure waits briefly again."""
        self.attempts = 0


class SinkRelay:
    """Delivers one sink until `stop` is set (or, with `once`, until it has caught up)."""

    def __init__(
        self,
        engine: sa.Engine,
        config: SinkConfig,
        stop: threading.Event,
        backoff: Backoff,
        poll: float = POLL_SECONDS,
        sink_factory: Callable[[SinkConfig], Sink] = open_sink,
        recorder: RelayRecorder | None = None,
    ):
        self.engine = engine
        self.config = config
        self.stop = stop
        self.backoff = backoff
        self.poll = poll
        self.sink = sink_factory(config)
        self.reader = BatchReader(engine, config.filters, config.batch_size, self.sink.fields)
        self.lock = cursors.SinkLock(engine, config.name)
        self.delivered = 0
        self.recorded_at = 0.0  # time.monotonic() of the last write of the cursor's row
        self.caught_up = False
        self.delivering = False  # whether this relay has held the sink's lock (not a spare)
        self.outage = SinkOutage(config, recorder)

    def run(self, once: bool = False) -> None:
        """The loop; returns when stopped, or with `once` when it has nothing left to do now
        (caught up, or the sink is another relay's)."""
        try:
            while not self.stop.is_set():
                wait, status = self._turn()
                if once and (status != "busy" or self.backoff.attempts >= ONCE_ATTEMPTS):
                    self.caught_up = status == "idle"
                    return
                self.stop.wait(wait)
        finally:
            self.reader.close()
            self.sink.close()
            self.lock.release()

    def _turn(self) -> tuple[float, str]:
        """One step: the seconds to wait before the next, and `busy` (more to deliver, or
        failing), `idle` (caught up) or `standby` (another relay delivers the sink)."""
        try:
            if not self.lock.held() and not self._take_lock():
                return HEARTBEAT_SECONDS, "standby"
            full = self._deliver_one_batch()
        except (SinkError, sa.exc.SQLAlchemyError, OSError) as error:
            text = self._note_failure(error)
            if isinstance(error, SinkError):
                self.outage.failed(text, self.delivered)
            return self.backoff.next_wait(), "busy"
        self.backoff.reset()
        return (0.0, "busy") if full else (self.poll, "idle")

    def _take_lock(self) -> bool:
        if not self.lock.acquire():
            return False
        self.delivering = True
        with self.engine.connect() as connection:
            self.delivered = cursors.delivered_id(connection, self.config.name)
        return True

    def _deliver_one_batch(self) -> bool:
        """Deliver the next batch and move the cursor; whether the batch was full."""
        batch = self.reader.read(self.delivered)
        if batch.rows:
            self.sink.deliver(batch.rows)
            self.outage.delivered(behind=batch.newest - self.delivered)
        stale = time.monotonic() - self.recorded_at >= HEARTBEAT_SECONDS
        if batch.up_to != self.delivered or stale:
            with self.engine.begin() as connection:
                cursors.record(connection, self.config.name, delivered=batch.up_to, state="running")
            self.delivered = batch.up_to
            self.recorded_at = time.monotonic()
        return len(batch.rows) == self.config.batch_size

    def _note_failure(self, error: Exception) -> str:
        """Say why in the cursor's row, if the database takes it (it may be what failed); the
        reason, one line."""
        text = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
        try:
            with self.engine.begin() as connection:
                cursors.record(
                    connection,
                    self.config.name,
                    delivered=self.delivered,
                    state="failing",
                    error=text,
                    failed=True,
                )
        except sa.exc.SQLAlchemyError:
            pass  # the database is what failed; the next successful turn records the state
        return text


class SinkOutage:
    """Whether a sink is down, for the relay's own rows: one `sink.failing` when it starts to
    refuse batches, one `sink.recovered` when it takes one again (never a row a retry)."""

    def __init__(self, config: SinkConfig, recorder: RelayRecorder | None):
        self.config = config
        self.recorder = recorder
        self.since: float | None = None  # time.monotonic() of the first failure
        self.attempts = 0

    def failed(self, error: str, delivered: int) -> None:
        """The sink refused a batch."""
        self.attempts += 1
        if self.since is None:
            self.since = time.monotonic()
            if self.recorder is not None:
                self.recorder.failing(self.config, error, delivered)

    def delivered(self, behind: int) -> None:
        """The sink took a batch; `behind`: the rows that were waiting for it."""
        if self.since is None:
            return
        down, attempts = time.monotonic() - self.since, self.attempts
        self.since, self.attempts = None, 0
        if self.recorder is not None:
            self.recorder.recovered(
                self.config, down_seconds=down, attempts=attempts, behind=behind
            )


def relay(
    engine: sa.Engine,
    sinks: list[SinkConfig],
    stop: threading.Event,
    once: bool = False,
    poll: float = POLL_SECONDS,
    backoff_cap: float = 30.0,
    recorder: RelayRecorder | None = None,
) -> list[str]:
    """Deliver every sink, each on a thread of its own, until `stop` (or caught up: `once`);
    the names of the sinks that `once` left behind (they failed ONCE_ATTEMPTS times in a row).
    With a `recorder`, the relay writes its own rows (backend/relay/records.py)."""
    relays = [
        SinkRelay(engine, sink, stop, Backoff(cap=backoff_cap), poll, recorder=recorder)
        for sink in sinks
    ]
    if recorder is not None:
        recorder.started(sinks)
    threads = [
        threading.Thread(target=r.run, args=(once,), name=f"sink-{r.config.name}") for r in relays
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if recorder is not None:
        recorder.stopped({r.config.name: r.delivered for r in relays if r.delivering})
    return [r.config.name for r in relays if once and not r.caught_up]
