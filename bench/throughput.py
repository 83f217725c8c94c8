"""What auditing costs: this service's audited GET /v1/me against the seed-style peer's.

    python -m bench.throughput [--rounds 3] [--duration 10] [--connections 16]
                               [--database-url URL] [--database-prefix audit_bench]

Serves, side by side on one PostgreSQL and with the same number of gunicorn workers:
- this service (its production gunicorn settings), audited and durable
  (`synchronous_commit` on);
- the peer of ../shared/peers/seed_style (a subscriber that adds the row to the request's
  session and commits), with auditing on, and with AUDIT=0 (the same token lookup and no
  audit: the floor of what an authenticated endpoint costs), on gunicorn's sync workers;
- the same unaudited peer on gevent workers (`-k gevent`), the worker class this service
  runs: the stricter floor, as it takes away what our workers gain by their class alone;
and loads each in turn with wrk, alternating the servers round by round so that the machine's
noise falls on all of them alike. Prints requests/s, p50 and p99 latency (medians over the
rounds), the ratios to both floors, and the resident memory of each server's workers. POST
/login is reported too; it is bounded by the password hash by design.
"""

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg

from bench.database import (
    bench_environ,
    bench_settings,
    libpq_url,
    migrate,
    recreate,
    with_database,
)
from bench.serving import answering, running, status_kb, worker_pids

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "seed_style"
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
USER, PASSWORD = "bench", "bench-password-1"
PEER_TOKEN = "bench-token-0123456789"  # the peer's app creates this user and token
SETTLE = 3.0  # seconds between two runs
OURS = "ours GET /v1/me (audited)"
PEER_AUDITED = "peer GET /v1/me (audited)"
# The unaudited peer: on sync workers (the first floor), and on gevent workers like ours.
FLOOR = "peer GET /v1/me (AUDIT=0)"
GEVENT_FLOOR = "peer GET /v1/me (AUDIT=0, gevent)"


def main() -> None:
    options = parse_args()
    url = options.database_url
    ours_url = with_database(url, f"{options.database_prefix}_ours")
    peer_url = with_database(url, f"{options.database_prefix}_peer")
    for database in (ours_url, peer_url):
        recreate(database)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, ExitStack() as stack:
        environment = _our_environment(ours_url, tmp, options)
        migrate(bench_settings(ours_url, tmp))
        create_user(environment)
        prepare_peer(peer_url)
        servers = {
            "ours": stack.enter_context(serve_ours(environment, options, 8301)),
            "peer, audited": stack.enter_context(
                serve_peer(peer_url, options, 8302, audit=True, directory=Path(tmp))
            ),
            "peer, AUDIT=0": stack.enter_context(
                serve_peer(peer_url, options, 8303, audit=False, directory=Path(tmp))
            ),
            "peer, AUDIT=0, gevent": stack.enter_context(
                serve_peer(
                    peer_url, options, 8304, audit=False, directory=Path(tmp), worker="gevent"
                )
            ),
        }
        token = login(8301)
        loads = {
            OURS: ("ours", 8301, "/v1/me", bearer(token)),
            PEER_AUDITED: ("peer, audited", 8302, "/v1/me", bearer(PEER_TOKEN)),
            FLOOR: ("peer, AUDIT=0", 8303, "/v1/me", bearer(PEER_TOKEN)),
            GEVENT_FLOOR: ("peer, AUDIT=0, gevent", 8304, "/v1/me", bearer(PEER_TOKEN)),
            "ours POST /login": ("ours", 8301, "/login", None),
        }
        runs: dict[str, list[dict]] = {name: [] for name in loads}
        for round_number in range(1, options.rounds + 1):
            for name, (_, port, path, headers) in loads.items():
                result = wrk(port, path, headers, options, Path(tmp))
                # wrk stops with requests still in flight (a login queued behind the
                # password hashes takes a second or more to finish): a worker still busy
                # with them when the next run connects would leave every new connection to
                # the other worker, and that run would measure one worker.
                time.sleep(SETTLE)
                runs[name].append(result)
                print(f"round {round_number}: {name:34} {result['rps']:8.0f} req/s", flush=True)
        memory = {name: workers_rss_mb(server) for name, server in servers.items()}
        synchronous_commit = show(ours_url, "synchronous_commit")
    report(runs, memory, synchronous_commit, options)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load_arguments(parser)
    return parser.parse_args()


def load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a wrk load on this service (bench/relay_lag.py runs the same load)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://audit:audit@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL URL whose role may create databases (two are made: PREFIX_ours and"
        " PREFIX_peer)",
    )
    parser.add_argument(
        "--database-prefix",
        default="audit_bench",
        help="the start of the two databases' names, so that two runs on one server keep apart",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, each server")


def _our_environment(url: str, instance_path: str, options) -> dict:
    return {
        **os.environ,
        **bench_environ(url, instance_path),
        "GUNICORN_WORKERS": str(options.workers),
        "GUNICORN_ACCESS_LOG": "",
    }


def create_user(environment: dict) -> None:
    subprocess.run(
        [BIN / "flask", "users", "create", USER, "--password-stdin"],
        cwd=ROOT,
        env=environment,
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextmanager
def serve_ours(environment: dict, options, port: int):
    command = [
        BIN / "gunicorn",
        "-c",
        "python:backend.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "wsgi:app",
    ]
    log = Path(environment["INSTANCE_PATH"]) / f"gunicorn-{port}.log"
    with running(
        command, ROOT, environment, log, answering(port, workers=options.workers)
    ) as process:
        yield process


def peer_environment(url: str, audit: bool = True) -> dict:
    return {
        **os.environ,
        "AUDIT": "1" if audit else "0",
        "DATABASE_URL": url.replace("postgresql://", "postgresql+psycopg://", 1),
    }


def prepare_peer(url: str) -> None:
    """The peer's tables and user, made once: each of its workers makes them if missing, and
    two doing it at once on an empty database fail (the second INSERT of its user), which
    stops that gunicorn."""
    subprocess.run(
        [BIN / "python", "-c", "from app import create_app; create_app()"],
        cwd=PEER,
        env=peer_environment(url),
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextmanager
def serve_peer(url: str, options, port: int, audit: bool, directory: Path, worker: str = "sync"):
    """The seed-style peer under gunicorn, on `worker` workers (`sync`, gunicorn's default, or
    `gevent`, which patches the standard library as it starts; psycopg then waits on the
    database cooperatively)."""
    environment = peer_environment(url, audit)
    command = [
        BIN / "gunicorn",
        "--worker-class",
        worker,
        "--workers",
        str(options.workers),
        "--bind",
        f"127.0.0.1:{port}",
        "app:create_app()",
    ]
    log = directory / f"gunicorn-{port}.log"
    with running(
        command, PEER, environment, log, answering(port, workers=options.workers)
    ) as process:
        yield process


def login(port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/login", method="POST", headers=basic()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["token"]


def basic() -> dict:
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wrk(port: int, path: str, headers: dict | None, options, tmp: Path) -> dict:
    """One wrk run: requests/s, p50 and p99 in milliseconds, and the non-2xx count."""
    command = [
        "wrk",
        "--threads",
        "2",
        "--connections",
        str(options.connections),
        "--duration",
        f"{options.duration}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if headers is None:  # POST /login with HTTP Basic
        script = tmp / "login.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.headers["Authorization"] = "{basic()["Authorization"]}"\n'
        )
        command += ["--script", str(script)]
    else:
        for name, value in headers.items():
            command += ["--header", f"{name}: {value}"]
    done = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=options.duration + 60,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"wrk failed (exit {done.returncode}) on port {port}{path}:\n{done.stdout}{done.stderr}"
        )
    output = done.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": _latency(output, "50%"),
        "p99_ms": _latency(output, "99%"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def _latency(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def workers_rss_mb(server: subprocess.Popen) -> list[float]:
    """Resident memory (MB) of each worker: the master's child processes."""
    return [status_kb(pid, "VmRSS") / 1024 for pid in worker_pids(server.pid)]


def show(url: str, setting: str) -> str:
    with psycopg.connect(libpq_url(url)) as connection:
        return connection.execute(f"SHOW {setting}").fetchone()[0]


def report(runs: dict, memory: dict, synchronous_commit: str, options) -> None:
    summary = {
        name: {
            key: statistics.median(run[key] for run in results)
            for key in ("rps", "p50_ms", "p99_ms", "non_2xx")
        }
        for name, results in runs.items()
    }
    floor = summary[FLOOR]["rps"]
    gevent_floor = summary[GEVENT_FLOOR]["rps"]
    print(
        f"\n{options.workers} gunicorn workers per server (ours: gevent; peer: sync, and gevent"
        f" for the stricter floor), wrk {options.connections} connections x {options.duration} s,"
        f" median of {options.rounds} rounds, synchronous_commit={synchronous_commit}\n"
    )
    print(
        f"{'':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs floor':>9}"
        f" {'vs gevent floor':>16}"
    )
    for name, figures in summary.items():
        print(
            f"{name:36} {figures['rps']:8.0f} {figures['p50_ms']:8.2f} "
            f"{figures['p99_ms']:8.2f} {figures['non_2xx']:8.0f} "
            f"{figures['rps'] / floor:9.2f} {figures['rps'] / gevent_floor:16.2f}"
        )
    ours = summary[OURS]
    peer = summary[PEER_AUDITED]
    print(f"\nours audited / peer unaudited (sync):   {ours['rps'] / floor:.2f}  (target >= 0.80)")
    print(
        f"ours audited / peer unaudited (gevent): {ours['rps'] / gevent_floor:.2f}"
        "  (target >= 0.90)"
    )
    print(f"peer audited / peer unaudited (sync):   {peer['rps'] / floor:.2f}")
    print(f"peer unaudited, gevent / sync:          {gevent_floor / floor:.2f}")
    print(
        f"ours p99 / peer audited p99:            {ours['p99_ms'] / peer['p99_ms']:.2f}"
        "  (target <= 1)"
    )
    print("\nworker resident memory (MB):")
    for name, sizes in memory.items():
        print(f"  {name:22} {', '.join(f'{size:.0f}' for size in sizes)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "runs": runs,
                "worker_rss_mb": memory,
                "synchronous_commit": synchronous_commit,
                "options": vars(options),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
