"""Helpers of the relay's tests: a sinks file, the relay run once, a webhook receiver that
fails, hangs or answers slowly on purpose, and what a sink received."""

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import config
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.extensions import db
from backend.relay.command import configured_sinks
from backend.relay.records import RelayRecorder
from backend.relay.runner import relay
from tests.helpers import flask_audit
from tests.serving import BIN

DEADLINE = 60.0  # seconds a relay test waits for what it expects


def toml_value(value) -> str:
    """A TOML literal of a str, bool, int, float or list of them."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_sinks(path: Path, *sinks: dict) -> Path:
    """A sinks file with one [[sink]] table per dict."""
    tables = [
        "[[sink]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in sink.items())
        for sink in sinks
    ]
    path.write_text("\n".join(tables))
    return path


def backlog(app, count: int) -> None:
    """`count` rows, written as the service writes them, a few group commits at a time."""
    with app.app_context():
        for start in range(0, count, 500):
            events = [
                AuditEvent(source="app", event="test.event", level="INFO", track=f"row {n}")
                for n in range(start, min(count, start + 500))
            ]
            assert None not in writer().write_batch(events)


def relay_once(app, *options: str):
    """`flask audit relay --once`: deliver what is there; the click result."""
    return flask_audit(app.test_cli_runner(), "relay", "--once", "--poll", "0.05", *options)


def file_rows(path: Path) -> list[dict]:
    """The rows a file sink wrote, in file order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(condition, what: str, deadline: float = DEADLINE) -> None:
    """Poll `condition` until it holds; fail naming `what` after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.05)


@contextmanager
def relaying(app, backoff_cap: float = 0.2) -> Iterator[None]:
    """The long-running relay of `app`'s sinks file (its own rows included) on a thread, until
    the block ends: then stopped as SIGTERM stops it, its batch finished."""
    with app.app_context():
        sinks, engine = configured_sinks(), db.engine
    stop = threading.Event()
    options = {"poll": 0.05, "backoff_cap": backoff_cap, "recorder": RelayRecorder(app)}
    thread = threading.Thread(target=relay, args=(engine, sinks, stop), kwargs=options)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive(), "the relay did not stop"


def start_relay(environment: dict, log, *options: str) -> subprocess.Popen:
    """`flask audit relay` as a process of its own (stderr to `log`)."""
    return subprocess.Popen(
        [BIN / "flask", "audit", "relay", "--poll", "0.05", *options],
        cwd=config.ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def assert_in_order_with_one_batch_again(ids: list[int], expected: list[int], batch: int) -> None:
    """Every expected id arrived, in order, but that a restart may have gone back over the one
    batch it had not recorded (at most `batch` ids twice, once)."""
    assert sorted(set(ids)) == expected
    assert 0 <= len(ids) - len(expected) <= batch
    restart = next((i for i in range(1, len(ids)) if ids[i] <= ids[i - 1]), len(ids))
    assert ids[:restart] == expected[:restart]
    assert ids[restart:] == expected[len(expected) - (len(ids) - restart) :]


class Receiver:
    """A webhook receiver on a loopback port: keeps the batches of every 2xx it gives.

    `answers` is a list of status codes to give, one a request, before settling on 200;
    `hang` makes it hold each request that long before answering."""

    def __init__(self, secret: str = "shared-secret"):
        self.secret = secret
        self.answers: list[int] = []
        self.hang = 0.0
        self.batches: list[list[dict]] = []
        self.requests = 0
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/audit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rows(self) -> list[dict]:
        """Every row accepted, in arrival order."""
        with self._lock:
            return [row for batch in self.batches for row in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver._answer(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    def _answer(self, headers, body: bytes) -> int:
        if self.hang:
            threading.Event().wait(self.hang)
        expected = hmac.new(
            self.secret.encode(),
            headers["X-Audit-Timestamp"].encode() + b"." + body,
            hashlib.sha256,
        ).hexdigest()
        with self._lock:
            self.requests += 1
            if headers["X-Audit-Signature"] != f"sha256={expected}":
                self.bad_signatures += 1
                return 401
            status = self.answers.pop(0) if self.answers else 200
            if 200 <= status < 300:
                self.batches.append(json.loads(body))
            return status
