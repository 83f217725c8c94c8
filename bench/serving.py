"""A gunicorn for a benchmark: started, waited for until it serves, stopped; its workers."""

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running(command: list, cwd: Path, environment: dict, port: int, path: str = "/v1/me",
            workers: int | None = None):
    """A gunicorn started in its own process group, ready to serve: `path` on `port` answers
    (any status) and, if given, its `workers` are all up. Stopped afterwards, group and all."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([str(part) for part in command], cwd=cwd, env=environment,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (_answers(port, path)
                   and (workers is None or len(worker_pids(process.pid)) == workers)):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"{command} did not start:\n{log.read().decode()}")
            time.sleep(0.2)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _answers(port: int, path: str) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).close()
    except urllib.error.HTTPError:
        return True  # an error status (401 without a token) is an answer too
    except OSError:
        return False
    return True


def worker_pids(pid: int) -> list[int]:
    """The child processes of `pid` (gunicorn's workers, for its master)."""
    return [int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def status_kb(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")
