"""Living with gunicorn's gevent workers (backend/gunicorn_conf.py).

A gevent worker serves each connection in a greenlet, all of them on one thread, and switches
between them only where one waits: on a socket (a client, PostgreSQL), a lock, a sleep. Two
kinds of work would hold up every other request of the worker while they run:

- a call into C that holds the thread (an argon2 hash: tens of milliseconds a login; a wait
  for a file lock), which `OffTheLoop` runs on a real thread instead, the loop carrying on;
- a long loop in Python over data that is already there (verifying the whole chain, an export
  whose rows PostgreSQL sends faster than the client reads them), which calls `pause` now and
  then: otherwise one request could hold the worker for minutes, and gunicorn, which hears from
  the worker only when its loop turns, would kill it as stuck after `timeout` seconds.

Outside a gevent worker (the development server, the CLI, the tests) both are plain calls.
"""

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_greenlets() -> bool:
    """Whether gevent has patched the standard library: this is a gevent worker."""
    monkey = sys.modules.get("gevent.monkey")  # never imported outside a gevent worker
    return monkey is not None and monkey.is_module_patched("threading")


class OffTheLoop:
    """Calls run at most `size` at a time and in their order of arrival: in a gevent worker on
    a pool of real threads of their own (the calling greenlet waits, the others run), else
    under a semaphore. What is called must release the GIL to gain (argon2, flock do)."""

    def __init__(self, size: int):
        self.size = size
        self._semaphore = threading.BoundedSemaphore(size)
        self._pool = None  # made in the worker that uses it: threads do not survive a fork

    def __call__(self, function: Callable[..., T], *args) -> T:
        if not in_greenlets():
            with self._semaphore:
                return function(*args)
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self.size)
        # Its exception comes back as a value: gevent's pool would print the traceback of one
        # raised on its thread (a wrong password is an exception of argon2's) before raising it.
        value, error = self._pool.apply(_outcome, (function, args))
        if error is not None:
            raise error
        return value


def _outcome(function: Callable[..., T], args: tuple) -> tuple[T | None, Exception | None]:
    try:
        return function(*args), None
    except Exception as error:
        return None, error


def pause() -> None:
    """Let the worker's other greenlets run, if any are ready; nothing outside gevent.

    A sleep, and not of 0: gevent runs a greenlet that sleeps 0 again before its loop polls
    for I/O and timers (so a request waiting on a socket would still wait), while any other
    sleep goes once round the loop. A microsecond has passed before the loop looks, so it
    costs no wait when no other request is ready (one of 10 us waits a millisecond)."""
    if in_greenlets():
        import gevent

        gevent.sleep(0.000_001)


def os_poll():
    """The operating system's `select.poll()`, even in a gevent worker, whose patched one
    answers through its event loop: for a look that never waits (a timeout of 0)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")()
    import select

    return select.poll()
