"""The relay's throughput on a backlog: N synthetic rows (bench's loader) delivered by
`flask audit relay --once`'s loop to a webhook, a syslog receiver and a file, one sink at a
time, each from an empty cursor. Prints rows per second of each.

    python -m bench.relay --rows 1000000 --url postgresql://USER:PASS@127.0.0.1/audit_bench

The receivers run in processes of their own and do the least a receiver must (read the whole
request or stream, answer 200), so the figure is the relay's: reading the rows from
PostgreSQL, building the messages, sending them.
"""

import argparse
import multiprocessing
import multiprocessing.queues
import re
import socket
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import sqlalchemy as sa

from backend.relay.config import SinkConfig, load_sinks
from backend.relay.runner import relay
from bench import database, load
from bench.serving import free_port

# The start of each row of a batch, as the relay sends it (export.json_line: `id` first, then
# `created_at`). The lag receiver finds them with this rather than parse the whole body: it
# stands for a SIEM on another machine, and its work here shares the CPUs with the service
# whose throughput bench/relay_lag.py compares, so it does as little as it can.
ROW_START = re.compile(rb'\{"id":(\d+),"created_at":"([^"]+)"')


def webhook_receiver(port: int, lags: multiprocessing.queues.Queue | None = None) -> None:
    """A receiver that reads each POST and answers 200 (in its own process); with `lags`, it
    puts there each batch's rows as (id, `created_at` as a timestamp, seconds from then to now)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if lags is not None:
                now = time.time()
                rows = [(int(i), _timestamp(at.decode())) for i, at in ROW_START.findall(body)]
                lags.put([(row_id, stamp, now - stamp) for row_id, stamp in rows])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _timestamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def syslog_receiver(port: int) -> None:
    """A TCP receiver that reads and drops everything (in its own process)."""
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            connection, _ = server.accept()
            threading.Thread(target=_drain, args=(connection,), daemon=True).start()


def _drain(connection: socket.socket) -> None:
    with connection:
        while connection.recv(1 << 20):
            pass


def sinks_file(directory: Path, kind: str, port: int) -> SinkConfig:
    settings = {
        "webhook": f'url = "http://127.0.0.1:{port}/audit"\nsecret = "bench"',
        "syslog": f'address = "127.0.0.1:{port}"',
        "file": f'path = "{directory / "trail.ndjson"}"',
    }[kind]
    path = directory / f"{kind}.toml"
    path.write_text(f'[[sink]]\nname = "bench-{kind}"\nkind = "{kind}"\n{settings}\n')
    return load_sinks(path)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", required=True, help="a PostgreSQL URL; its database is remade")
    parser.add_argument("--kinds", default="webhook,syslog,file")
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    settings = database.bench_settings(options.url, str(directory))
    database.recreate(options.url)
    database.migrate(settings)
    loaded = load.load(
        database.libpq_url(options.url),
        options.rows,
        settings["AUDIT_SIGNING_KEY"].encode(),
        settings["AUDIT_CHECKPOINT_EVERY"],
    )
    print(f"loaded {loaded.rows:,} rows in {loaded.seconds:.0f} s")
    engine = sa.create_engine(settings["SQLALCHEMY_DATABASE_URI"])
    for kind in options.kinds.split(","):
        port = free_port()
        target = {"webhook": webhook_receiver, "syslog": syslog_receiver}.get(kind)
        receiver = multiprocessing.Process(target=target, args=(port,), daemon=True)
        if target is not None:
            receiver.start()
            time.sleep(0.5)
        sink = sinks_file(directory, kind, port)
        started = time.perf_counter()
        behind = relay(engine, [sink], threading.Event(), once=True, poll=0.01)
        seconds = time.perf_counter() - started
        if target is not None:
            receiver.terminate()
        status = "caught up" if not behind else "NOT caught up"
        print(
            f"{kind:8} {options.rows:>10,} rows in {seconds:6.1f} s ="
            f" {options.rows / seconds:>9,.0f} rows/s ({status}, batches of {sink.batch_size})"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
