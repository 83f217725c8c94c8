"""Living with gunicorn's gevent workers (backend/gunicorn_conf.py).

A gevent worker serves each connection in a greenlet, all of them on one thread, and switches
between them only where one waits: on a socket (a client, PostgreSQL), a lock, a sleep. Two
kinds of work would hold up every other request of the worker while they run:

- a long computation in C that never waits (an argon2 hash: tens of milliseconds a login),
  which `off_the_loop` runs on a real thread of gevent's pool instead, the loop carrying on;
- a long loop in Python over data that is already there (verifying the whole chain, an export
  whose rows PostgreSQL sends faster than the client reads them), which calls `pause` now and
  then: otherwise one request could hold the worker for minutes, and gunicorn, which hears from
  the worker only when its loop turns, would kill it as stuck after `timeout` seconds.

Outside a gevent worker (the development server, the CLI, the tests) both are plain calls.
"""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_greenlets() -> bool:
    """Whether gevent has patched the standard library: this is a gevent worker."""
    monkey = sys.modules.get("gevent.monkey")  # never imported outside a gevent worker
    return monkey is not None and monkey.is_module_patched("threading")


def off_the_loop(function: Callable[..., T], *args) -> T:
    """`function(*args)`, on one of gevent's real threads in a gevent worker (the calling
    greenlet waits for it, the others run); the function must release the GIL to gain."""
    if not in_greenlets():
        return function(*args)
    import gevent

    # Its exception comes back as a value: gevent's pool would print the traceback of one
    # raised on its thread (a wrong password is an exception of argon2's) before re-raising it.
    value, error = gevent.get_hub().threadpool.apply(_outcome, (function, args))
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
