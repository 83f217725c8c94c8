"""GroupCommit: concurrent requests share a transaction, and each gets its own outcome.

A real GroupCommit with a stand-in for the database write: these tests are about who writes
what, when, and who learns what; the database side is tested in test_audit_trail and
test_faults, through the same class.
"""

import threading
import time
from types import SimpleNamespace

import pytest

from backend.audit.group_commit import AuditUnavailable, GroupCommit


class Recorder:
    """A write_batch that takes `delay` seconds and answers each event with event * 10."""

    def __init__(self, delay: float = 0.0, fail_on=None):
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[int]] = []
        self.writers: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, events: list[int], more=None) -> list[int]:
        with self.lock:
            self.batches.append(list(events))
            self.writers.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in events:
            raise RuntimeError(f"write of {events} failed")
        return [event * 10 for event in events]


def submit_all(group: GroupCommit, events: list[int]) -> dict:
    """Submit each event from a thread of its own, all at once; their outcomes by event."""
    outcomes: dict = {}
    start = threading.Barrier(len(events))

    def one(event):
        start.wait()
        try:
            outcomes[event] = group.submit(event)
        except BaseException as error:  # noqa: BLE001 (the outcome under test)
            outcomes[event] = error

    threads = [threading.Thread(target=one, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_a_lone_request_writes_its_own_event_on_its_own_thread():
    recorder = Recorder()
    group = GroupCommit(recorder)
    assert group.submit(7) == 70
    assert recorder.batches == [[7]]
    assert recorder.writers == {threading.get_ident()}


def test_concurrent_requests_share_batches_and_each_gets_its_own_result():
    recorder = Recorder(delay=0.02)
    outcomes = submit_all(GroupCommit(recorder), list(range(40)))
    assert outcomes == {event: event * 10 for event in range(40)}
    written = [event for batch in recorder.batches for event in batch]
    assert sorted(written) == list(range(40))  # each exactly once
    assert len(recorder.batches) < 40  # while one batch was written, the others queued up
    assert max(len(batch) for batch in recorder.batches) > 1


def test_a_batch_never_exceeds_the_maximum(monkeypatch):
    monkeypatch.setattr(GroupCommit, "MAX_BATCH", 3)
    recorder = Recorder(delay=0.02)
    outcomes = submit_all(GroupCommit(recorder), list(range(20)))
    assert outcomes == {event: event * 10 for event in range(20)}
    assert max(len(batch) for batch in recorder.batches) == 3


def test_a_failed_batch_fails_every_request_in_it_and_only_those(monkeypatch):
    monkeypatch.setattr(GroupCommit, "MAX_BATCH", 4)  # so some of the 12 are in other batches
    recorder = Recorder(delay=0.02, fail_on=5)
    group = GroupCommit(recorder)
    outcomes = submit_all(group, list(range(12)))
    failed_batch = next(batch for batch in recorder.batches if 5 in batch)
    assert 0 < len(failed_batch) < len(outcomes)  # both kinds of outcome below are checked
    for event, outcome in outcomes.items():
        if event in failed_batch:
            assert isinstance(outcome, RuntimeError)
        else:
            assert outcome == event * 10
    assert group.submit(100) == 1000  # the line moves on


class Joiner:
    """A write_batch that, as the writer does once it holds the chain's lock, takes into its
    first batch the events queued behind it by then (`more()`): it waits for `joining` of them
    to queue first. Answers each event with event * 10, or raises if `fail` is set."""

    def __init__(self, group_line, joining: int, fail: bool = False):
        self.line, self.joining, self.fail = group_line, joining, fail
        self.batches: list[list[int]] = []
        self.joined: list[int] = []  # what more() gave
        self.entered = threading.Event()

    def __call__(self, events: list[int], more) -> list[int]:
        if not self.batches:
            self.entered.set()
            deadline = time.monotonic() + 10
            while len(self.line()) < len(events) + self.joining and time.monotonic() < deadline:
                time.sleep(0.005)
            self.joined = more()
            events = events + self.joined
        self.batches.append(events)
        if self.fail:
            raise RuntimeError(f"write of {events} failed")
        return [event * 10 for event in events]


def joined_first_batch(joining: int, events: list[int], fail: bool = False):
    """The first event submitted alone, the rest while its batch is being written."""
    group = GroupCommit(None)
    joiner = Joiner(lambda: group._line, joining, fail)
    group._write_batch = joiner
    outcomes: dict = {}

    def one(event):
        try:
            outcomes[event] = group.submit(event)
        except BaseException as error:  # noqa: BLE001 (the outcome under test)
            outcomes[event] = error

    first = threading.Thread(target=one, args=(events[0],), daemon=True)
    first.start()
    assert joiner.entered.wait(timeout=10)  # its batch is made: the others queue behind it
    others = [threading.Thread(target=one, args=(event,), daemon=True) for event in events[1:]]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in [first, *others])
    return joiner.batches, joiner.joined, outcomes


def test_events_queued_while_a_batch_is_written_join_it_when_it_takes_more():
    batches, joined, outcomes = joined_first_batch(3, [1, 2, 3, 4])
    assert len(batches) == 1  # no second transaction for the three that joined
    assert batches[0][0] == 1 and sorted(joined) == [2, 3, 4]
    assert outcomes == {1: 10, 2: 20, 3: 30, 4: 40}


def test_events_that_joined_a_failed_batch_fail_with_it():
    batches, joined, outcomes = joined_first_batch(2, [1, 2, 3], fail=True)
    assert len(batches) == 1 and sorted(joined) == [2, 3]
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes.values())
    assert len(outcomes) == 3


def test_a_batch_takes_no_more_than_the_maximum(monkeypatch):
    monkeypatch.setattr(GroupCommit, "MAX_BATCH", 3)
    batches, joined, outcomes = joined_first_batch(4, [1, 2, 3, 4, 5])
    assert [len(batch) for batch in batches] == [3, 2] and len(joined) == 2
    assert outcomes == {event: event * 10 for event in range(1, 6)}


def test_a_batch_once_answered_takes_no_more():
    """A `more` kept past its batch's answer gives nothing: the slots behind that batch are
    the next batch's by then, and taking them would write and answer them twice."""
    kept, stale = [], []
    second_queued = threading.Event()

    def write(events, more):
        if not kept:  # the first batch: its `more` kept, not called; the next events queue
            kept.append(more)
            assert second_queued.wait(timeout=10)
        else:  # the next batch, made of what queued behind the first
            stale.append(kept[0]())
        return [event * 10 for event in events]

    group = GroupCommit(write)
    first = threading.Thread(target=lambda: group.submit(1), daemon=True)
    first.start()
    while not kept:
        time.sleep(0.001)
    outcomes: dict = {}
    others = [
        threading.Thread(target=lambda e=event: outcomes.update({e: group.submit(e)}), daemon=True)
        for event in (2, 3)
    ]
    for thread in others:
        thread.start()
    while len(group._line) < 3:
        time.sleep(0.001)
    second_queued.set()
    for thread in [first, *others]:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in [first, *others])
    assert stale == [[]]
    assert outcomes == {2: 20, 3: 30}


def test_a_request_whose_turn_does_not_come_fails_closed_and_leaves_the_line(monkeypatch):
    monkeypatch.setattr(GroupCommit, "WAIT", 0.2)
    entered, release = threading.Event(), threading.Event()
    written, leader_results = [], []

    def stuck_then_fine(events, more):
        if events[0].event == "stuck":
            entered.set()
            release.wait(timeout=10)
        written.extend(event.event for event in events)
        return [len(written)] * len(events)

    group = GroupCommit(stuck_then_fine)
    leader = threading.Thread(target=lambda: leader_results.append(group.submit(Event("stuck"))))
    leader.start()
    assert entered.wait(timeout=10)  # the leader is writing its batch of one
    with pytest.raises(AuditUnavailable):
        group.submit(Event("late"))  # queued behind it for longer than WAIT
    release.set()
    leader.join(timeout=10)
    assert not leader.is_alive()
    assert leader_results == [1]  # the leader's own write went through
    assert group.submit(Event("next")) == 2
    assert written == ["stuck", "next"]  # "late" was never written: its request failed


def Event(name: str) -> SimpleNamespace:  # noqa: N802 (stands in for AuditEvent)
    return SimpleNamespace(source="v1", event=name)
