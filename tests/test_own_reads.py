"""`own_reads=exclude` on /v1/logs, its stats and its export: the caller's own successful reads
of the trail left out (what the viewer hides by default), nothing else. SQLite and PostgreSQL."""

import json
from datetime import timedelta

from backend.clock import utcnow
from tests.helpers import assert_error


def read_rows(api, token: str, **params) -> list[dict]:
    response = api.get("/v1/logs", token, query_string={"limit": 1000, **params})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def test_own_reads_exclude_leaves_out_my_reads_and_nothing_else(api, users):
    admin, alice = users["admin"], users["alice"]
    api.get("/v1/logs", admin)
    api.get("/v1/logs/stats", admin)
    api.get("/v1/logs", alice)
    api.get("/v1/logs?limit=0", admin)  # a 400: a failed read stays
    everything = read_rows(api, admin)
    kept = read_rows(api, admin, own_reads="exclude")
    left_out = [row for row in everything if row not in kept]
    assert {(row["user"], row["path"], row["status"]) for row in left_out} == {
        ("admin", "/v1/logs", 200),
        ("admin", "/v1/logs/stats", 200),
    }
    assert any(row["user"] == "alice" and row["path"] == "/v1/logs" for row in kept)
    assert any(row["user"] == "admin" and row["status"] == 400 for row in kept)


def test_stats_and_export_leave_out_the_same_rows(api, users):
    admin = users["admin"]
    for _ in range(3):
        api.get("/v1/logs", admin)
    kept = read_rows(api, admin, own_reads="exclude")
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    stats = api.get(f"/v1/logs/stats?own_reads=exclude&since={yesterday}&bucket=day", admin)
    # The stats' own request is answered before its row is written: it counts what `kept` saw.
    assert stats.get_json()["total"] == len(kept)
    export = api.get("/v1/logs/export?own_reads=exclude", admin)
    exported = [json.loads(line)["id"] for line in export.get_data(as_text=True).splitlines()]
    assert set(exported) >= {row["id"] for row in kept}
    assert not [
        row
        for row in read_rows(api, admin)
        if row["id"] in exported
        and (row["user"] == "admin" and row["path"].startswith("/v1/logs") and row["status"] < 400)
    ]


def test_own_reads_takes_include_or_exclude_only(api, users):
    assert_error(api.get("/v1/logs?own_reads=no", users["admin"]), 400, {"own_reads"})
