"""GET /v1/logs and GET /v1/logs/<id>: visibility, filters, order, limit, keyset pages, errors.

Most tests compare a listing with the rows in the database at the moment of the request,
selected and ordered in Python as CONTRACT.md says; the request's own `api.request` row is
written after its answer, so it is never part of that answer.
"""

import re
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.audit import listing
from backend.clock import moved, rfc3339
from tests.conftest import ADMIN, ALICE, basic
from tests.helpers import (
    FIRST_RELEASE_FIELDS,
    STRUCTURED_FIELDS,
    T,
    assert_error,
    next_link,
    write,
)

CONTRACT_KEYS = {*FIRST_RELEASE_FIELDS, *STRUCTURED_FIELDS}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
MICROSECOND = timedelta(microseconds=1)
MAX_PAGES = 100


# --- helpers ---------------------------------------------------------------------------------


def logs(api, token, **params):
    return api.get("/v1/logs", token, query_string=params)


def ids(response) -> list[int]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def expected_ids(api, keep=lambda row: True, order="desc") -> list[int]:
    """Ids of the rows now in the database that `keep` accepts, in (created_at, id) order."""
    rows = sorted(api.rows(), key=lambda row: (row.created_at, row.id), reverse=order == "desc")
    return [row.id for row in rows if keep(row)]


def assert_selects(api, token, params: dict, keep) -> None:
    """The listing with `params` is exactly the rows `keep` accepts, newest first, and `keep`
    leaves some rows out (else the filter would prove nothing)."""
    everything, expected = expected_ids(api), expected_ids(api, keep)
    assert 0 < len(expected) < len(everything)
    assert ids(logs(api, token, limit=1000, **params)) == expected


def walk(api, token, between=lambda: None, **params) -> list:
    """Every page, following `next` from the first; `between()` runs before each later page."""
    responses = [logs(api, token, **params)]
    for _ in range(MAX_PAGES):
        cursor = responses[-1].get_json()["next"]
        if cursor is None:
            return responses
        between()
        responses.append(logs(api, token, **params, after=cursor))
    pytest.fail(f"still a next page after {MAX_PAGES} pages")


def busy(api, users, written: list):
    """A `between` for walk() that writes new rows: a login, and a /v1/me call whose request id
    goes to `written`."""

    def between():
        api.login(*ALICE)
        written.append(api.get("/v1/me", users["bob"]).headers["X-Request-ID"])

    return between


def assert_one_new_row_per_later_page(api, written: list, responses: list) -> None:
    """busy() wrote a row (found by request id) before each page but the first."""
    new_rows = [row for row in api.rows() if row.request_id in written]
    assert len(new_rows) == len(written) == len(responses) - 1


def seen(responses) -> list[int]:
    return [row_id for response in responses for row_id in ids(response)]


def flipped(text: str, index: int) -> str:
    """`text` with the character at `index` changed."""
    return text[:index] + ("B" if text[index] == "A" else "A") + text[index + 1 :]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def trail(api, users):
    """A varied trail: several users, addresses, sources and levels, and anonymous rows."""
    api.get("/v1/me")  # 401: v1, WARNING, no user
    api.get("/v1/me", users["alice"], environ_base={"REMOTE_ADDR": "203.0.113.9"})
    api.get("/v1/nope", users["bob"])  # 404: v1, WARNING
    api.client.post("/login", headers=basic("alice", "not-her-password"))  # auth, WARNING
    write(
        api.app,
        level="ERROR",
        event="request.exception",
        track="builtins.ZeroDivisionError: division by zero",
    )
    write(api.app, level="CRITICAL", source="main", event="test.critical", track="disk on fire")
    write(api.app, level="DEBUG", source="main", event="test.debug", track="chatter")
    for track in (
        "quota at 100% for user_id 7",
        "quota at 1000 for userXid 7",
        "back\\slash",
        "backslash",
        "Ünïcode in ÉTÉ",
    ):
        write(api.app, user="alice", track=track)
    return users


@pytest.fixture
def around_t(api):
    """Rows one microsecond before T, at T and one microsecond after; their ids by name.

    The writer never lets time run backwards along the ids, so these (in 2020) come first:
    tests ask for this fixture before `trail` or `users`.
    """
    return {
        name: write(api.app, created_at=T + offset * MICROSECOND, event="around.t")
        for name, offset in (("before", -1), ("at", 0), ("after", 1))
    }


# --- visibility ------------------------------------------------------------------------------


def test_an_admin_sees_every_row(api, trail):
    expected = expected_ids(api)
    assert {row.user for row in api.rows()} >= {None, "admin", "alice", "bob"}
    assert ids(logs(api, trail["admin"], limit=1000)) == expected


def test_a_non_admin_sees_only_their_own_rows(api, trail):
    assert_selects(api, trail["alice"], {}, lambda row: row.user == "alice")


def test_a_non_admin_asking_for_someone_elses_rows_gets_none(api, trail):
    assert api.rows(user="bob")
    response = logs(api, trail["alice"], user="bob")
    assert response.status_code == 200
    assert response.get_json() == {"items": [], "next": None}


def test_one_row_is_the_same_as_in_the_listing(api, trail):
    item = logs(api, trail["admin"], limit=1).get_json()["items"][0]
    response = api.get(f"/v1/logs/{item['id']}", trail["admin"])
    assert response.status_code == 200
    assert response.get_json() == item


def test_a_non_admin_can_read_one_of_their_own_rows(api, trail):
    [row] = api.rows(user="alice", event="login.failure")
    response = api.get(f"/v1/logs/{row.id}", trail["alice"])
    assert response.status_code == 200
    assert (response.get_json()["id"], response.get_json()["user"]) == (row.id, "alice")


def test_someone_elses_row_is_404_like_a_missing_one(api, trail):
    [bobs] = api.rows(user="bob", path="/v1/nope")
    missing_id = max(row.id for row in api.rows()) + 1000
    other = api.get(f"/v1/logs/{bobs.id}", trail["alice"])
    missing = api.get(f"/v1/logs/{missing_id}", trail["alice"])
    assert_error(other, 404)
    assert_error(missing, 404)
    assert other.get_json() == missing.get_json()


@pytest.mark.parametrize("path", ["/v1/logs", "/v1/logs/1"])
@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_without_a_valid_token_it_is_401(api, users, path, token):
    response = api.get(path, token)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


# --- filters ---------------------------------------------------------------------------------


def test_user_filter_selects_that_users_rows(api, trail):
    assert_selects(api, trail["admin"], {"user": "alice"}, lambda row: row.user == "alice")


def test_ip_filter_selects_rows_from_that_address(api, trail):
    assert_selects(api, trail["admin"], {"ip": "203.0.113.9"}, lambda row: row.ip == "203.0.113.9")


def test_level_filter_selects_one_level(api, trail):
    assert_selects(api, trail["admin"], {"level": "WARNING"}, lambda row: row.level == "WARNING")


def test_level_filter_takes_a_comma_separated_list(api, trail):
    assert_selects(
        api,
        trail["admin"],
        {"level": "WARNING,ERROR,CRITICAL"},
        lambda row: row.level in {"WARNING", "ERROR", "CRITICAL"},
    )


def test_level_filter_ignores_case(api, trail):
    assert_selects(
        api,
        trail["admin"],
        {"level": "warning,Error"},
        lambda row: row.level in {"WARNING", "ERROR"},
    )


@pytest.mark.parametrize("source", ["auth", "v1", "main", "app"])
def test_source_filter_selects_that_source(api, trail, source):
    assert_selects(api, trail["admin"], {"source": source}, lambda row: row.source == source)


def test_event_filter_selects_that_event(api, trail):
    assert_selects(
        api, trail["admin"], {"event": "login.failure"}, lambda row: row.event == "login.failure"
    )


def test_since_is_inclusive(api, around_t, trail):
    assert_selects(api, trail["admin"], {"since": rfc3339(T)}, lambda row: row.created_at >= T)


@pytest.mark.parametrize(
    "since",
    [
        "2020-01-01T12:00:00.000000+02:00",
        "2020-01-01T05:30:00-04:30",
        "2020-01-01t10:00:00z",
        "2020-01-01 10:00:00Z",
    ],
)
def test_since_takes_any_rfc_3339_spelling_of_the_moment(api, around_t, trail, since):
    assert_selects(api, trail["admin"], {"since": since}, lambda row: row.created_at >= T)


def test_until_is_exclusive(api, around_t, trail):
    assert ids(logs(api, trail["admin"], until=rfc3339(T))) == [around_t["before"]]


def test_since_and_until_select_a_window(api, around_t, trail):
    response = logs(api, trail["admin"], since=rfc3339(T), until=rfc3339(T + MICROSECOND))
    assert ids(response) == [around_t["at"]]


def test_q_is_a_case_insensitive_substring_of_track(api, trail):
    assert_selects(
        api, trail["admin"], {"q": "INVALID Pass"}, lambda row: "invalid pass" in row.track.lower()
    )


def test_q_ignores_case_beyond_ascii(api, trail):
    assert_selects(
        api,
        trail["admin"],
        {"q": "üNÏcode IN été"},
        lambda row: "ünïcode in été" in row.track.lower(),
    )


@pytest.mark.parametrize("q", ["100%", "user_id", "back\\slash"])
def test_q_takes_like_wildcards_literally(api, trail, q):
    assert_selects(api, trail["admin"], {"q": q}, lambda row: q in row.track.lower())


def test_filters_combine(api, trail):
    [login] = api.rows(user="alice", event="login.success")
    since = login.created_at + MICROSECOND
    params = {
        "user": "alice",
        "source": "auth",
        "level": "info,warning",
        "q": "pass",
        "since": rfc3339(since),
    }
    assert_selects(
        api,
        trail["admin"],
        params,
        lambda row: (
            row.user == "alice"
            and row.source == "auth"
            and row.level in {"INFO", "WARNING"}
            and "pass" in row.track.lower()
            and row.created_at >= since
        ),
    )


NEEDLE_WALKS = {  # name: (extra parameters, viewer, which needle rows each selects)
    "q alone": ({}, ADMIN, lambda row: True),
    "levels": ({"level": "info,error"}, ADMIN, lambda row: row.level in {"INFO", "ERROR"}),
    "since": ({"since": "2000-01-01T00:00:00Z"}, ADMIN, lambda row: True),
    "a non-admin": ({}, ALICE, lambda row: row.user == ALICE[0]),
}


@pytest.mark.parametrize("walk_name", NEEDLE_WALKS)
@pytest.mark.parametrize(
    "needles",
    [
        [2, 3, 5, 9, 10, 11, 13, 17, 22, 23],  # spread over blocks of 4 ids, the newest included
        [2, 3, 5, 6],  # none in the newest blocks: the older rows answer
        [21, 22, 23],  # only in the newest block
    ],
)
def test_q_pages_join_the_newest_block_and_the_older_rows_in_order(
    api, monkeypatch, needles, walk_name
):
    """listing.page reads a newest-first `q` in two parts: the newest block of ids, then the
    older rows if the block holds less than a page. With blocks of 4 ids and pages of 2, every
    page may come from either part or both, and the walk must be the plain listing's, with
    the other filters and the visibility rule too."""
    monkeypatch.setattr(listing, "ID_BLOCK_BITS", 2)
    params, viewer, keep = NEEDLE_WALKS[walk_name]
    api.create_user(*ADMIN, is_admin=True)
    api.create_user(*ALICE)
    token = api.login(*viewer)
    levels, users = ("INFO", "ERROR", "WARNING"), (ALICE[0], "bob")
    while (last := api.rows()[-1].id) < 24:
        needle = last + 1 in needles
        write(
            api.app,
            track="a needle" if needle else "hay",
            level=levels[last % 3],
            user=users[last % 2],
        )
    expected = [row.id for row in reversed(api.rows()) if "needle" in row.track and keep(row)]
    assert expected and set(expected) <= set(needles)
    pages = walk(api, token, q="NEEDLE", limit=2, **params)
    assert [row_id for page in pages for row_id in ids(page)] == expected


def test_q_pages_across_months_see_each_needle_once_in_order(api, monkeypatch):
    """The newest block's search is bounded in time by the block's first row (on PostgreSQL
    the months before it are pruned): over rows written across three months, with blocks of
    4 ids and pages of 2, the walk is the plain listing's."""
    monkeypatch.setattr(listing, "ID_BLOCK_BITS", 2)
    api.create_user(*ADMIN, is_admin=True)
    token = api.login(*ADMIN)
    for days_ago in (70, 40, 0):
        with moved(timedelta(days=-days_ago)):
            for n in range(7):
                write(api.app, track="a needle" if n % 3 == 0 else "hay")
    expected = [row.id for row in reversed(api.rows()) if "needle" in row.track]
    assert len(expected) == 9
    pages = walk(api, token, q="NEEDLE", limit=2)
    assert [row_id for page in pages for row_id in ids(page)] == expected


# --- order and limit -------------------------------------------------------------------------


def test_rows_come_newest_first_by_default(api, around_t, trail):
    # The rows around T (2020) are the oldest, so they come last.
    expected = expected_ids(api)
    assert expected[-3:] == [around_t["after"], around_t["at"], around_t["before"]]
    assert ids(logs(api, trail["admin"], limit=1000)) == expected


def test_order_desc_gives_newest_first(api, around_t, trail):
    expected = expected_ids(api)
    assert ids(logs(api, trail["admin"], order="desc", limit=1000)) == expected


def test_order_asc_gives_oldest_first(api, around_t, trail):
    expected = expected_ids(api, order="asc")
    assert expected[:3] == [around_t["before"], around_t["at"], around_t["after"]]
    assert ids(logs(api, trail["admin"], order="asc", limit=1000)) == expected


def test_limit_defaults_to_100(api, users):
    for number in range(105):
        write(api.app, track=f"row {number}")
    expected = expected_ids(api)
    response = logs(api, users["admin"])
    assert ids(response) == expected[:100]
    assert response.get_json()["next"] is not None


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_limit_caps_the_page(api, trail, limit):
    expected = expected_ids(api)
    assert len(expected) > 7
    assert ids(logs(api, trail["admin"], limit=limit)) == expected[:limit]


# --- pagination ------------------------------------------------------------------------------


def test_following_next_newest_first_sees_every_row_once_while_rows_are_written(api, trail):
    expected, written = expected_ids(api), []
    responses = walk(api, trail["admin"], busy(api, trail, written), limit=3)
    assert len(responses) > 3
    assert_one_new_row_per_later_page(api, written, responses)
    assert seen(responses) == expected  # the new rows are newer than the first page


def test_following_next_oldest_first_sees_every_row_once_while_rows_are_written(api, trail):
    written = []
    responses = walk(api, trail["admin"], busy(api, trail, written), order="asc", limit=4)
    last_request = responses[-1].headers["X-Request-ID"]
    expected = expected_ids(api, lambda row: row.request_id != last_request, order="asc")
    assert len(responses) > 3
    assert_one_new_row_per_later_page(api, written, responses)
    assert seen(responses) == expected  # the new rows included, each once


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_rows_sharing_a_timestamp_are_paged_without_repeats_or_gaps(api, users, order):
    for number in range(7):
        write(api.app, created_at=T, event="tie", track=f"tie {number}")
    expected = expected_ids(api, lambda row: row.event == "tie", order=order)
    responses = walk(api, users["admin"], event="tie", order=order, limit=2)
    assert len(responses) == 4
    assert seen(responses) == expected


def test_next_is_null_on_the_last_page_and_there_is_no_link(api, trail):
    [*_, last] = walk(api, trail["admin"], limit=5)
    assert ids(last)
    assert last.get_json()["next"] is None
    assert "Link" not in last.headers


def test_a_page_that_ends_at_the_last_row_has_no_next(api, users):
    for number in range(7):
        write(api.app, event="seven", track=f"row {number}")
    response = logs(api, users["admin"], event="seven", limit=7)
    assert len(ids(response)) == 7
    assert response.get_json()["next"] is None


def test_a_page_with_a_next_page_has_an_absolute_link_header(api, trail):
    response = logs(api, trail["admin"], limit=2)
    assert response.get_json()["next"] is not None
    url = urlsplit(next_link(response))
    assert (url.scheme, url.netloc, url.path) == ("http", "localhost", "/v1/logs")


def test_following_the_link_gives_the_same_page_as_passing_after(api, trail):
    params = {"source": "v1", "limit": 1}
    response = logs(api, trail["admin"], **params)
    pages = 0
    while response.get_json()["next"] is not None:
        by_link = api.get(next_link(response), trail["admin"])
        by_after = logs(api, trail["admin"], **params, after=response.get_json()["next"])
        assert by_link.status_code == 200
        assert by_link.get_json() == by_after.get_json()
        response, pages = by_link, pages + 1
        assert pages < MAX_PAGES
    assert pages >= 2


def test_the_link_keeps_the_other_filters(api, trail):
    params = {"user": "alice", "source": "auth", "level": "info,warning", "limit": "1"}
    response = logs(api, trail["admin"], **params)
    query = parse_qs(urlsplit(next_link(response)).query)
    assert query == {
        **{name: [value] for name, value in params.items()},
        "after": [response.get_json()["next"]],
    }


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"colour": "red"}, {"colour"}),
        ({"limit": "0"}, {"limit"}),
        ({"limit": "1001"}, {"limit"}),
        ({"limit": "abc"}, {"limit"}),
        ({"level": "NOPE"}, {"level"}),
        ({"level": "INFO,NOPE"}, {"level"}),
        ({"source": "nope"}, {"source"}),
        ({"order": "sideways"}, {"order"}),
        ({"since": "yesterday"}, {"since"}),
        ({"since": "21/11/2026 10:00"}, {"since"}),
        ({"since": "2026-11-21T10:00:00"}, {"since"}),
        ({"since": "20261121T100000Z"}, {"since"}),
        ({"since": "2026-11-21T10:00Z"}, {"since"}),
        ({"since": "2026-11-21T10:00:00+0200"}, {"since"}),
        ({"until": "2026-11-21T10:00:00.123456"}, {"until"}),
        ({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T10:00:00Z"}, {"until"}),
        ({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T09:00:00Z"}, {"until"}),
        ({"ip": "not-an-ip"}, {"ip"}),
        ({"after": "not-a-cursor"}, {"after"}),
        ({"limit": "0", "ip": "not-an-ip", "colour": "red"}, {"limit", "ip", "colour"}),
    ],
    ids=lambda value: (
        "&".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, dict)
        else ",".join(sorted(value))
    ),
)
def test_a_bad_parameter_is_400_naming_it(api, users, params, fields):
    assert_error(logs(api, users["admin"], **params), 400, details=fields)


def test_limit_out_of_bounds_says_the_bounds(api, users):
    error = assert_error(logs(api, users["admin"], limit=1001), 400, details={"limit"})
    assert error["details"] == {"limit": ["must be between 1 and 1000"]}


@pytest.mark.parametrize("part", ["payload", "signature"])
def test_a_tampered_cursor_is_400(api, trail, part):
    cursor = logs(api, trail["admin"], limit=1).get_json()["next"]
    index = 0 if part == "payload" else cursor.index(".") + 1
    assert_error(
        logs(api, trail["admin"], limit=1, after=flipped(cursor, index)), 400, details={"after"}
    )


def test_a_cursor_of_a_newest_first_listing_is_400_for_oldest_first(api, trail):
    cursor = logs(api, trail["admin"], limit=1).get_json()["next"]
    assert logs(api, trail["admin"], limit=1, after=cursor).status_code == 200
    assert_error(
        logs(api, trail["admin"], limit=1, order="asc", after=cursor), 400, details={"after"}
    )


# --- the row ---------------------------------------------------------------------------------


def test_the_listing_is_json_with_items_and_next(api, trail):
    response = logs(api, trail["admin"])
    assert response.content_type == "application/json; charset=utf-8"
    assert set(response.get_json()) == {"items", "next"}


def test_a_row_has_exactly_the_fields_of_the_contract(api, trail):
    items = logs(api, trail["admin"], limit=1000).get_json()["items"]
    assert items and all(set(item) == CONTRACT_KEYS for item in items)
    [login] = [
        item for item in items if (item["event"], item["user"]) == ("login.success", "alice")
    ]
    assert {
        key: login[key] for key in ("source", "level", "ip", "track", "method", "path", "status")
    } == {
        "source": "auth",
        "level": "INFO",
        "ip": "127.0.0.1",
        "track": "logged in",
        "method": "POST",
        "path": "/login",
        "status": 200,
    }
    assert login["request_id"] and login["user_agent"]


def test_created_at_is_rfc3339_utc_with_z_and_microseconds(api, trail):
    created = {row.id: row.created_at for row in api.rows()}
    for item in logs(api, trail["admin"], limit=1000).get_json()["items"]:
        assert RFC3339_UTC.fullmatch(item["created_at"]), item["created_at"]
        assert datetime.fromisoformat(item["created_at"]) == created[item["id"]]


def test_created_at_keeps_six_digits_when_microseconds_are_zero(api):
    row_id = write(api.app, created_at=T)  # the first row, so no later time is kept instead
    api.create_user(*ADMIN, is_admin=True)
    response = api.get(f"/v1/logs/{row_id}", api.login(*ADMIN))
    assert response.get_json()["created_at"] == "2020-01-01T10:00:00.000000Z"
