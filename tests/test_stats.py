"""GET /v1/logs/stats: rows counted per hour or day and per level, on SQLite and PostgreSQL.

The expected counts are worked out by hand from rows written at known times in 2020 (so they
come first in the chain, before any row of the users' logins, which are written now).
"""

from datetime import UTC, datetime, timedelta

import pytest

from backend.clock import rfc3339, utcnow
from backend.models import LEVELS
from tests.helpers import assert_error, write

T = datetime(2020, 1, 1, 10, 0, tzinfo=UTC)  # a Wednesday, on the hour
HOUR, DAY, MICROSECOND = timedelta(hours=1), timedelta(days=1), timedelta(microseconds=1)
# (offset from T, level, user, source, event, track)
SEEDED = [
    (timedelta(minutes=0), "INFO", "alice", "auth", "login.success", "logged in"),
    (timedelta(minutes=5), "INFO", "bob", "auth", "login.success", "logged in"),
    (timedelta(minutes=30), "WARNING", "alice", "auth", "login.failure", "invalid password"),
    (HOUR - MICROSECOND, "WARNING", "alice", "auth", "login.failure", "invalid password"),
    (HOUR, "INFO", "alice", "v1", "api.request", "GET /v1/me -> 200"),
    (3 * HOUR + timedelta(minutes=30), "ERROR", None, "app", "request.exception", "boom"),
    (DAY + timedelta(hours=2), "DEBUG", None, "main", "index.view", "GET /"),
    (DAY + timedelta(hours=3), "CRITICAL", "bob", "app", "disk.full", "disk on fire"),
]


def counts(**nonzero) -> dict:
    return {level: nonzero.get(level, 0) for level in LEVELS}


def stats(api, token, **params):
    return api.get("/v1/logs/stats", token, query_string=params)


def buckets(response) -> list[tuple[str, dict]]:
    """(start, counts) of every bucket, after checking each total and the overall total."""
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    for bucket in body["buckets"]:
        assert bucket["total"] == sum(bucket["counts"].values())
        assert list(bucket["counts"]) == list(LEVELS)
    assert body["total"] == sum(bucket["total"] for bucket in body["buckets"])
    return [(bucket["start"], bucket["counts"]) for bucket in body["buckets"]]


def at(offset: timedelta) -> str:
    return rfc3339(T + offset)


@pytest.fixture
def seeded(api):
    """SEEDED, written in 2020 (ask for it before `users`: the chain's time never goes back)."""
    for offset, level, user, source, event, track in SEEDED:
        write(
            api.app,
            created_at=T + offset,
            level=level,
            user=user,
            source=source,
            event=event,
            track=track,
            ip="203.0.113.9" if user == "bob" else "127.0.0.1",
        )


def test_rows_are_counted_per_hour_and_level(api, seeded, users):
    response = stats(api, users["admin"], since=at(0 * HOUR), until=at(4 * HOUR))
    assert buckets(response) == [
        (at(0 * HOUR), counts(INFO=2, WARNING=2)),
        (at(1 * HOUR), counts(INFO=1)),
        (at(2 * HOUR), counts()),
        (at(3 * HOUR), counts(ERROR=1)),
    ]
    body = response.get_json()
    assert (body["bucket"], body["since"], body["until"], body["total"]) == (
        "hour",
        at(0 * HOUR),
        at(4 * HOUR),
        6,
    )


def test_rows_are_counted_per_day_from_midnight_utc(api, seeded, users):
    midnight = T.replace(hour=0)
    response = stats(
        api,
        users["admin"],
        bucket="day",
        since=rfc3339(midnight),
        until=rfc3339(midnight + 3 * DAY),
    )
    assert buckets(response) == [
        (rfc3339(midnight), counts(INFO=3, WARNING=2, ERROR=1)),
        (rfc3339(midnight + DAY), counts(DEBUG=1, CRITICAL=1)),
        (rfc3339(midnight + 2 * DAY), counts()),
    ]


def test_a_bucket_cut_by_since_or_until_counts_only_the_rows_inside(api, seeded, users):
    # From 10:05 (inclusive) to 11:00 (exclusive): the row at 10:00 and the one at 11:00 are out.
    response = stats(api, users["admin"], since=at(timedelta(minutes=5)), until=at(HOUR))
    assert buckets(response) == [(at(0 * HOUR), counts(INFO=1, WARNING=2))]


def test_since_and_until_in_another_offset_mean_the_same_instants(api, seeded, users):
    response = stats(
        api, users["admin"], since="2020-01-01T12:00:00+02:00", until="2020-01-01T14:00:00+02:00"
    )
    assert buckets(response) == [
        (at(0 * HOUR), counts(INFO=2, WARNING=2)),
        (at(1 * HOUR), counts(INFO=1)),
    ]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"level": "warning,ERROR"}, [counts(WARNING=2), counts(), counts(), counts(ERROR=1)]),
        ({"user": "alice"}, [counts(INFO=1, WARNING=2), counts(INFO=1), counts(), counts()]),
        ({"ip": "203.0.113.9"}, [counts(INFO=1), counts(), counts(), counts()]),
        ({"source": "v1"}, [counts(), counts(INFO=1), counts(), counts()]),
        ({"event": "login.failure"}, [counts(WARNING=2), counts(), counts(), counts()]),
        ({"q": "PASSWORD"}, [counts(WARNING=2), counts(), counts(), counts()]),
        ({"user": "alice", "level": "INFO"}, [counts(INFO=1), counts(INFO=1), counts(), counts()]),
    ],
    ids=lambda value: (
        "&".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else ""
    ),
)
def test_the_filters_of_the_listing_apply(api, seeded, users, params, expected):
    response = stats(api, users["admin"], since=at(0 * HOUR), until=at(4 * HOUR), **params)
    assert [levels for _, levels in buckets(response)] == expected


def test_a_non_admin_counts_only_their_own_rows(api, seeded, users):
    window = {"since": at(-10 * HOUR), "until": at(2 * DAY - 10 * HOUR)}  # two whole days
    alice = [levels for _, levels in buckets(stats(api, users["alice"], bucket="day", **window))]
    bob = [levels for _, levels in buckets(stats(api, users["bob"], bucket="day", **window))]
    assert alice == [counts(INFO=2, WARNING=2), counts()]
    assert bob == [counts(INFO=1), counts(CRITICAL=1)]


def test_a_non_admin_asking_for_someone_elses_rows_counts_none(api, seeded, users):
    response = stats(api, users["bob"], user="alice", since=at(0 * HOUR), until=at(4 * HOUR))
    assert buckets(response) == [(at(hour * HOUR), counts()) for hour in range(4)]
    assert response.get_json()["total"] == 0


def test_without_since_it_counts_the_last_48_hours_in_whole_hours(api, users):
    before = utcnow()
    body = stats(api, users["admin"]).get_json()
    after = utcnow()
    starts = [datetime.fromisoformat(bucket["start"]) for bucket in body["buckets"]]
    until = datetime.fromisoformat(body["until"])
    assert before <= until <= after
    assert len(starts) == 48
    assert starts == [starts[0] + number * HOUR for number in range(48)]
    assert starts[-1] <= until < starts[-1] + HOUR
    assert starts[-1] == until.replace(minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(body["since"]) == starts[0]
    # The three logins of `users`, in the last hour (or the one before, just after the hour).
    assert body["total"] == 3
    assert sum(bucket["total"] for bucket in body["buckets"][-2:]) == 3


def test_without_since_by_day_it_counts_the_last_90_days(api, users):
    body = stats(api, users["admin"], bucket="day").get_json()
    starts = [datetime.fromisoformat(bucket["start"]) for bucket in body["buckets"]]
    assert len(starts) == 90
    assert starts == [starts[0] + number * DAY for number in range(90)]
    assert all(start.time() == datetime.min.time() for start in starts)
    assert starts[-1].date() == datetime.fromisoformat(body["until"]).date()


def test_an_until_on_the_hour_ends_with_the_hour_before_it(api, seeded, users):
    body = stats(api, users["admin"], until=at(4 * HOUR)).get_json()
    assert len(body["buckets"]) == 48
    assert body["buckets"][-1]["start"] == at(3 * HOUR)
    assert body["since"] == at(4 * HOUR - 48 * HOUR)
    assert body["total"] == 6


def test_a_thousand_buckets_are_counted(api, users):
    response = stats(api, users["admin"], since=at(-1000 * HOUR), until=at(0 * HOUR))
    assert len(buckets(response)) == 1000


def test_more_than_a_thousand_buckets_is_400_naming_since(api, users):
    response = stats(api, users["admin"], since=at(-1000 * HOUR - MICROSECOND), until=at(0 * HOUR))
    error = assert_error(response, 400, {"since"})
    assert "1001 hour buckets" in error["details"]["since"][0]
    # ... which by day is two buckets.
    assert (
        stats(
            api,
            users["admin"],
            bucket="day",
            since=at(-1000 * HOUR - MICROSECOND),
            until=at(0 * HOUR),
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "week"}, "bucket"),
        ({"bucket": ""}, "bucket"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2020-01-01T10:00:00"}, "since"),
        ({"since": "2020-01-01T10:00:00Z", "until": "2020-01-01T10:00:00Z"}, "until"),
        ({"since": "9999-01-01T00:00:00Z"}, "since"),  # in the future, and until is now
        ({"since": "0001-01-01T00:00:00Z", "bucket": "day"}, "since"),
        ({"until": "0001-01-01T00:00:00Z"}, "until"),
        ({"limit": "10"}, "limit"),
        ({"after": "x"}, "after"),
        ({"order": "asc"}, "order"),
        ({"level": "LOUD"}, "level"),
        ({"ip": "not-an-ip"}, "ip"),
    ],
    ids=lambda value: (
        "&".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
    ),
)
def test_a_bad_parameter_is_400_naming_it(api, users, params, field):
    assert_error(stats(api, users["admin"], **params), 400, {field})


def test_without_a_token_it_is_401(api):
    response = stats(api, None)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_request_is_audited_like_any_v1_request(api, users):
    response = stats(api, users["alice"], bucket="day")
    [row] = api.rows(request_id=response.headers["X-Request-ID"])
    assert (row.source, row.event, row.level, row.user, row.status, row.track) == (
        "v1",
        "api.request",
        "INFO",
        "alice",
        200,
        "GET /v1/logs/stats?bucket=day -> 200",
    )


def test_the_openapi_document_describes_it(client):
    document = client.get("/v1/openapi.json").get_json()
    operation = document["paths"]["/v1/logs/stats"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {
        "user",
        "ip",
        "level",
        "source",
        "event",
        "since",
        "until",
        "q",
        "target",
        "target_type",
        "outcome",
        "own_reads",
        "bucket",
    }
    assert parameters["bucket"]["schema"]["enum"] == ["hour", "day"]
    assert {"200", "400", "401"} <= set(operation["responses"])
    assert "48 hours" in operation["description"] and "1000 buckets" in operation["description"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[1]
    assert set(document["components"]["schemas"][name]["properties"]) == {
        "bucket",
        "since",
        "until",
        "total",
        "buckets",
    }
