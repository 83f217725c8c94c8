"""Group commit: the events of a process's concurrent requests are appended in one
transaction (one chain lock, one commit, one disk flush for the lot, instead of one each);
each request still returns only once its own event is durable. Events that join the line
while a transaction waits for the chain's lock ride in it too."""

import logging
import threading
from collections import deque
from itertools import islice

from werkzeug.exceptions import ServiceUnavailable

from backend.audit.events import AuditEvent

logger = logging.getLogger(__name__)


class AuditUnavailable(ServiceUnavailable):
    """An event could not be made durable (neither the database nor the spool took it, or its
    turn to be written never came): the request must not succeed."""

    description = "The audit trail cannot record this request right now; try again later."


class GroupCommit:
    """Group commit without a thread of its own (LevelDB's writer queue): requests that want to
    write queue up; the one at the front writes every event waiting (up to MAX_BATCH) in one
    transaction, wakes their requests, and hands the front to the next request in line.

    A lone request writes its own event with no switch; under load, one transaction carries
    the events of all the process's concurrent requests (greenlets in a gevent worker, threads
    under the development server and in tests), those that queued while it waited for the
    chain's lock (another worker's transaction) included: `write_batch(events, more)` calls
    `more()` once it holds the lock, for the events queued behind `events` since, and answers
    for them too. A request waits at most WAIT seconds for a turn that has not come, then
    fails closed (503); once its event is in a batch being written it waits for the outcome,
    which the database's timeouts bound.
    """

    MAX_BATCH = 500
    WAIT = 30.0

    def __init__(self, write_batch):
        self._write_batch = write_batch
        self._mutex = threading.Lock()
        self._line: deque[_Slot] = deque()

    def submit(self, event: AuditEvent) -> int | None:
        """Queue `event`; return what `write_batch` gave for it once it is durable."""
        slot = _Slot(event)
        with self._mutex:
            self._line.append(slot)
            front = len(self._line) == 1
        if not front and not slot.wait(self.WAIT):
            with self._mutex:
                if not slot.taken and self._line[0] is not slot:
                    self._line.remove(slot)
                    logger.error(
                        "audit write of %s/%s not durable after %s s",
                        event.source,
                        event.event,
                        self.WAIT,
                    )
                    raise AuditUnavailable()
            slot.wait(None)  # in a batch being written, or just made the front: not long now
        if slot.done:
            return slot.outcome()
        self._lead()
        return slot.outcome()

    def _lead(self) -> None:
        """Write the waiting events at the front of the line, and those that join it before
        the write holds the chain's lock; then wake the next front."""
        with self._mutex:
            batch = self._take([])
        written = False

        def more() -> list[AuditEvent]:
            with self._mutex:
                # Once the batch is answered, the slots behind it are the next batch's.
                return [] if written else [slot.event for slot in self._take(batch)]

        try:
            results = self._write_batch([slot.event for slot in batch], more)
        except BaseException as error:  # these requests fail (503, or 500 for a bug)
            results = [error] * len(batch)
        with self._mutex:
            written = True
            for slot, result in zip(batch, results, strict=True):
                self._line.popleft()
                slot.finish(result)
            if self._line:
                self._line[0].wake()

    def _take(self, batch: list["_Slot"]) -> list["_Slot"]:
        """Add the slots queued behind `batch` (the front of the line) to it, up to MAX_BATCH;
        return those added. Under the mutex."""
        joined = list(islice(self._line, len(batch), self.MAX_BATCH))
        for slot in joined:
            slot.taken = True
        batch.extend(joined)
        return joined


class _Slot:
    """A request's place in the line: its event, and then the outcome of writing it."""

    __slots__ = ("event", "taken", "done", "_result", "_signal")

    def __init__(self, event: AuditEvent):
        self.event = event
        self.taken = self.done = False
        self._result = None
        # Set when the slot is woken: made the front of the line, or finished. (Under gevent's
        # monkey-patching, threading.Event is gevent's, and a wait yields to other greenlets.)
        self._signal = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        """Whether the slot was woken within `timeout` seconds (None: however long it takes)."""
        return self._signal.wait(timeout)

    def wake(self) -> None:
        self._signal.set()

    def finish(self, result) -> None:
        self._result, self.done = result, True
        self.wake()

    def outcome(self) -> int | None:
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result
