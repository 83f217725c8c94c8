"""The relay under bench/throughput.py's load: end-to-end lag (a row's `created_at`, stamped
before its commit, to the webhook receiving it) and what the relay costs the requests.

    python -m bench.relay_lag [--rounds 3] [--duration 10] [--connections 16]

Serves this service as bench/throughput.py does (its production gunicorn settings, gevent
workers) and loads the audited GET /v1/me with wrk, round by round without and then with a
`flask audit relay` process delivering every row to a webhook receiver (a process of its own
that notes each row's lag). Prints requests/s of both runs (medians over the rounds), their
ratio, and the lag's p50, p99 and maximum over the rows of the loaded runs.
"""

import argparse
import multiprocessing
import os
import queue
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.database import bench_settings, libpq_url, migrate, recreate, with_database
from bench.relay import webhook_receiver
from bench.serving import free_port
from bench.throughput import (
    BIN,
    ROOT,
    _our_environment,
    create_user,
    load_arguments,
    login,
    serve_ours,
    wrk,
)

PORT = 8311
DEADLINE = 60.0  # seconds to wait for the rows of a run to reach the receiver


def arrived(lags: multiprocessing.Queue, newest: int, since: float) -> list[float]:
    """The lags of the rows created from `since` (a timestamp), once the receiver has had every
    row up to id `newest` (or after DEADLINE seconds: then the late rows' lags are missing)."""
    found, last, give_up = [], 0, time.monotonic() + DEADLINE
    while last < newest and time.monotonic() < give_up:
        try:
            batch = lags.get(timeout=1)
        except queue.Empty:
            continue
        last = max(last, *(row_id for row_id, _, _ in batch))
        found += [lag for _, created, lag in batch if created >= since]
    if last < newest:
        print(f"  rows up to {last} of {newest} arrived within {DEADLINE:.0f} s", flush=True)
    return found


def newest_id(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as connection:
        return connection.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()[0]


def loaded_round(url, environment: dict, token: str, lags, options, tmp: Path) -> tuple:
    """One wrk run with the relay delivering: its figures, and the lags of its rows."""
    relay = subprocess.Popen(
        [BIN / "flask", "audit", "relay"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Only this run's rows: the relay starts on the rows of the run without it, whose
        # wait for a relay that was not there is no lag of the relay's.
        arrived(lags, newest_id(url), since=time.time())
        started, cpu = time.time(), cpu_seconds(relay.pid)  # its start-up is behind it
        result = wrk(PORT, "/v1/me", {"Authorization": f"Bearer {token}"}, options, tmp)
        round_lags = arrived(lags, newest_id(url), since=started)
        result["relay_cpu"], result["rows"] = cpu_seconds(relay.pid) - cpu, len(round_lags)
        return result, round_lags
    finally:
        relay.terminate()
        relay.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    options = parse_args()
    url = with_database(options.database_url, options.database)
    recreate(url)
    lags = multiprocessing.Queue()
    receiver_port = free_port()
    receiver = multiprocessing.Process(
        target=webhook_receiver, args=(receiver_port, lags), daemon=True
    )
    receiver.start()
    with tempfile.TemporaryDirectory(prefix="bench-relay-lag-") as tmp:
        sinks = Path(tmp) / "sinks.toml"
        sinks.write_text(
            '[[sink]]\nname = "lag"\nkind = "webhook"\n'
            f'url = "http://127.0.0.1:{receiver_port}/audit"\nsecret = "bench"\n'
        )
        environment = _our_environment(url, tmp, options) | {"AUDIT_SINKS_FILE": str(sinks)}
        migrate(bench_settings(url, tmp))
        create_user(environment)
        plain, relayed, all_lags = [], [], []
        with serve_ours(environment, options, PORT):
            token = login(PORT)
            for number in range(1, options.rounds + 1):
                headers = {"Authorization": f"Bearer {token}"}
                plain.append(wrk(PORT, "/v1/me", headers, options, Path(tmp)))
                result, round_lags = loaded_round(url, environment, token, lags, options, Path(tmp))
                relayed.append(result)
                all_lags += round_lags
                print(
                    f"round {number}: without relay {plain[-1]['rps']:7.0f} req/s,"
                    f" with relay {result['rps']:7.0f} req/s, {len(round_lags):,} rows relayed,"
                    f" the relay's CPU {result['relay_cpu']:.2f} s",
                    flush=True,
                )
    receiver.terminate()
    report(plain, relayed, all_lags, options)


def report(plain: list, relayed: list, lags: list[float], options) -> None:
    without = statistics.median(run["rps"] for run in plain)
    with_relay = statistics.median(run["rps"] for run in relayed)
    cuts = statistics.quantiles(lags, n=100) if len(lags) > 1 else [float("nan")] * 99
    print(
        f"\n{options.workers} gevent workers, wrk {options.connections} connections x"
        f" {options.duration} s, median of {options.rounds} rounds,"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    print(f"GET /v1/me without the relay: {without:8.0f} req/s")
    print(f"GET /v1/me with the relay:    {with_relay:8.0f} req/s")
    print(f"ratio with/without: {with_relay / without:.3f} (target: within 0.03 of 1)")
    # Each round's two runs are back to back, so their ratio is free of the drifts between
    # rounds (another process waking up on the shared CPUs slows both runs of its round).
    paired = statistics.median(r["rps"] / p["rps"] for p, r in zip(plain, relayed, strict=True))
    print(f"median of the rounds' own ratios: {paired:.3f}")
    rows = sum(run["rows"] for run in relayed)
    cpu = sum(run["relay_cpu"] for run in relayed)
    share = cpu / (options.rounds * options.duration)
    print(
        f"the relay's own CPU: {cpu:.2f} s for {rows:,} rows ="
        f" {cpu / max(rows, 1) * 1e6:.0f} us a row, {share:.1%} of one CPU while loaded"
    )
    print(
        f"end-to-end lag over {len(lags):,} rows: p50 {cuts[49] * 1000:.0f} ms,"
        f" p99 {cuts[98] * 1000:.0f} ms, max {max(lags, default=0) * 1000:.0f} ms"
        " (target: p99 under 1 s)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load_arguments(parser)
    parser.add_argument("--database", default="audit_bench_relay_lag", help="remade, then used")
    return parser.parse_args()


if __name__ == "__main__":
    main()
