"""Helpers of the relay's tests: a sinks file, the relay run once, a webhook receiver that
fails, hangs or answers slowly on purpose, and what a sink received."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers import flask_audit


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


def relay_once(app, *options: str):
    """`flask audit relay --once`: deliver what is there; the click result."""
    return flask_audit(app.test_cli_runner(), "relay", "--once", "--poll", "0.05", *options)


def file_rows(path: Path) -> list[dict]:
    """The rows a file sink wrote, in file order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


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
