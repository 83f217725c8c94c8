"""The service's Prometheus metrics (prometheus-client), and what `GET /metrics` serves.

gunicorn runs several worker processes; prometheus-client's multiprocess mode adds up their
counters and histograms from files in PROMETHEUS_MULTIPROC_DIR, which backend/gunicorn_conf.py
makes before any worker starts and cleans of each dead worker's live gauges. Without it (the
development server, the tests' app) the metrics are the one process's.

The sinks' lag and failures are read from the database at each scrape (their cursors), since
the relay is a process of its own.
"""

import hmac
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Decided when prometheus_client is first imported, as prometheus_client itself decides how its
# values are kept: a variable set later in the process (importing gunicorn_conf sets it) must
# not make the scrape read files this process never wrote.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

ROWS_WRITTEN = Counter(
    "audit_rows_written", "Audit rows made durable, by source and level", ["source", "level"]
)
WRITE_SECONDS = Histogram(
    "audit_write_seconds",
    "Time to make one group commit's events durable",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "audit_group_commit_batch_size",
    "Events written in one group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
SPOOLED = Counter("audit_events_spooled", "Audit events spooled while the database was away")
LOCKOUTS = Counter("audit_login_lockouts", "Lockouts after failed logins, by scope", ["scope"])
REQUESTS = Counter("http_requests", "HTTP responses, by status", ["status"])


def record_written(events, ids, started: float) -> None:
    """Count a group commit: its events written (not spooled), its size and its duration."""
    WRITE_SECONDS.observe(time.perf_counter() - started)
    BATCH_SIZE.observe(len(events))
    for event, row_id in zip(events, ids, strict=True):
        if row_id is not None:
            ROWS_WRITTEN.labels(event.source, event.level).inc()


def init_app(app: Flask) -> None:
    """Count every response by status."""

    @app.after_request
    def count_response(response: Response) -> Response:
        REQUESTS.labels(str(response.status_code)).inc()
        return response


def authorized() -> bool:
    """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>`."""
    expected = f"Bearer {current_app.config['METRICS_TOKEN']}".encode()
    given = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(given, expected)


def exposition(sink_collector) -> bytes:
    """Every metric in Prometheus' text format: all workers' (multiprocess mode) or this
    process's, and the sinks' as `sink_collector` reads them."""
    if MULTIPROCESS:
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers)
    else:
        workers = REGISTRY
    sinks = CollectorRegistry()
    sinks.register(sink_collector)
    # The text format is a list of metric families: two lists, one after the other, are one.
    return generate_latest(workers) + generate_latest(sinks)


class SinkCollector:
    """The sinks' lag, delivered id and failures, from `statuses` (backend.relay.status)."""

    def __init__(self, statuses: list[dict]):
        self.statuses = statuses

    def collect(self) -> Iterator:
        lag = GaugeMetricFamily("audit_sink_lag_rows", "Rows the sink is behind", labels=["sink"])
        up_to = GaugeMetricFamily(
            "audit_sink_delivered_id", "The last row id delivered to the sink", labels=["sink"]
        )
        failures = CounterMetricFamily(
            "audit_sink_failures", "Failed delivery attempts to the sink", labels=["sink"]
        )
        for status in self.statuses:
            lag.add_metric([status["name"]], status["lag"])
            up_to.add_metric([status["name"]], status["delivered_id"])
            failures.add_metric([status["name"]], status["failures"])
        yield from (lag, up_to, failures)


CONTENT_TYPE = CONTENT_TYPE_LATEST
