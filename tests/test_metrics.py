"""GET /metrics: Prometheus' text format behind METRICS_TOKEN, counting what the service does,
across gunicorn's workers (prometheus-client's multiprocess mode)."""

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import assert_error, make_trail, write
from tests.relaying import write_sinks
from tests.serving import serving

TOKEN = "scrape-token-1"


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the text format (prometheus' own parser)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def test_metrics_is_404_while_metrics_token_is_unset(client):
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer anything"}), 404)


@pytest.mark.settings(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
def test_metrics_without_the_token_is_401_with_a_challenge(client, header):
    response = client.get("/metrics", headers={"Authorization": header} if header else {})

    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'


@pytest.mark.settings(METRICS_TOKEN=TOKEN)
def test_rows_written_are_counted_by_source_and_level(client):
    key = ("audit_rows_written_total", (("level", "DEBUG"), ("source", "main")))
    before = scrape(client).get(key, 0)

    make_trail(client, 3)

    assert scrape(client)[key] == before + 3


@pytest.mark.settings(METRICS_TOKEN=TOKEN)
def test_responses_are_counted_by_status(client):
    key = ("http_requests_total", (("status", "404"),))
    before = scrape(client).get(key, 0)

    client.get("/no-such-page")

    assert scrape(client)[key] == before + 1


@pytest.mark.settings(METRICS_TOKEN=TOKEN)
def test_write_latency_and_batch_sizes_are_histograms(client):
    before = scrape(client)
    make_trail(client, 2)
    after = scrape(client)

    for name in ("audit_write_seconds_count", "audit_group_commit_batch_size_count"):
        assert after[(name, ())] >= before.get((name, ()), 0) + 2


def test_sink_lag_and_failures_are_read_from_the_cursors(relay_app, sinks_file, tmp_path):
    relay_app.config["METRICS_TOKEN"] = TOKEN
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(tmp_path / "t")})
    newest = [write(relay_app) for _ in range(3)][-1]

    scraped = scrape(relay_app.test_client())

    assert scraped[("audit_sink_lag_rows", (("sink", "archive"),))] == newest
    assert scraped[("audit_sink_failures_total", (("sink", "archive"),))] == 0


@pytest.mark.serving
def test_served_metrics_add_up_every_workers_counts(database_url, tmp_path):
    with serving(database_url, tmp_path, METRICS_TOKEN=TOKEN, GUNICORN_WORKERS="2") as served:
        client, _ = served
        # New connections each time: gunicorn hands them to either worker.
        for _ in range(20):
            assert client.get("/healthz").status == 200
        request = urllib.request.Request(
            client.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with client.opener.open(request, timeout=10) as response:
            scraped = samples(response.read().decode())

    assert scraped[("http_requests_total", (("status", "200"),))] >= 20
