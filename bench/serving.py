"""A gunicorn started, waited for until it serves, and stopped; its workers. The one launcher of
the benchmarks and of the tests (tests/serving.py turns a server that never served into a test
failure); no pytest here.

Every wait has a deadline, and `stop` leaves no process behind: SIGTERM first (gunicorn's
graceful stop), then SIGKILL to the whole process group.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

READY_DEADLINE = 30.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful_timeout (30 s), and then some


class NotServing(Exception):
    """The server exited, or did not serve within READY_DEADLINE; the message has its output."""


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list, cwd: Path, environment: dict, log: Path) -> subprocess.Popen:
    """Start `command` from `cwd` in a session of its own, its output appended to `log`."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(
    ready: Callable[[subprocess.Popen], bool], server: subprocess.Popen, log: Path
) -> None:
    """Poll `ready(server)` until it is true; NotServing if the server exits first or the
    deadline passes. A connection refused or cut off mid-answer counts as not ready."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise NotServing(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if ready(server):
                return
        except (OSError, ValueError):  # not listening yet, or cut off mid-answer
            pass
        time.sleep(0.2)
    raise NotServing(f"the server was not ready within {READY_DEADLINE:.0f} s:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM (gunicorn stops its workers), wait, and only then kill the whole group."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    # The master's own session: a worker left behind by a killed master dies with it.
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=STOP_TIMEOUT)


@contextmanager
def running(
    command: list,
    cwd: Path,
    environment: dict,
    log: Path,
    ready: Callable[[subprocess.Popen], bool],
) -> Iterator[subprocess.Popen]:
    """`command` started (see `start`), waited for until `ready` (see `wait_until`), and
    stopped afterwards, group and all."""
    server = start(command, cwd, environment, log)
    try:
        wait_until(ready, server, log)
        yield server
    finally:
        stop(server)


def answering(
    port: int,
    path: str = "/v1/me",
    workers: int | None = None,
) -> Callable[[subprocess.Popen], bool]:
    """A `ready` for `running`: `path` on `port` answers (any status) and, if given, the
    server's `workers` are all up."""

    def ready(server: subprocess.Popen) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # an error status (401 without a token) is an answer too
        return workers is None or len(worker_pids(server.pid)) == workers

    return ready


def worker_pids(pid: int) -> list[int]:
    """The pids of the children of `pid` (gunicorn's workers, for its master), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": the command name may hold spaces and parentheses.
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:
            pids.append(int(text.split(" ", 1)[0]))
    return sorted(pids)


def status_kb(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")
