"""GET /audit in a real browser: the app served with gunicorn (the Makefile's `run` command, on
SQLite, once for the module), and Debian's Chromium driven with Playwright through what a person
does: sign in, read, filter, load more, open a row, read the chart, download the export, sign
out; and a user name that is a `<script>` stays text. Every expected value comes from the rows
the test wrote or from the database itself, never from the endpoints the page reads.

tests/test_audit_page.py checks the page in-process.
"""

import csv
import io
import json
import os
import random
import shutil
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from backend import create_app, dispose_engines
from backend.accounts import create_user
from backend.audit import writer
from backend.audit.events import AuditEvent
from backend.clock import rfc3339, utcnow
from backend.extensions import db
from backend.models import Log
from tests.conftest import ALICE, make_settings
from tests.serving import (
    ADMIN,
    free_port,
    make_run_command,
    running,
    server_environment,
)

CHROMIUM = Path("/usr/bin/chromium")
HOUR = timedelta(hours=1)
PAGE_SIZE = 50  # rows per page of the page's listing (audit.js)
XSS_USER = '<img src=x onerror="window.__xss=1">'
XSS_TRACK = "GET /v1/logs?q=<script>window.__xss=2</script> -> 200"
XSS_LOGIN = "<script>window.__xss=3</script>"


def seeded_trail(top: datetime) -> list[dict]:
    """A day and a half of a small service's trail before `top` (an hour's start), oldest first:
    logins and API calls of three users, a few refusals, quiet hours, a burst of failed logins
    against admin from one address, a crash, and two rows whose text is markup."""
    rng = random.Random(8)
    rows = []
    for hours_ago in range(40, 0, -1):
        if hours_ago in (9, 10, 22, 23, 24):
            continue  # nights are quiet
        for minute in sorted(rng.sample(range(60), rng.randint(1, 6))):
            user, kind = rng.choice(("alice", "bob", "carol")), rng.random()
            at = top - hours_ago * HOUR + timedelta(minutes=minute, seconds=rng.randint(0, 59))
            if kind < 0.4:
                rows.append(
                    dict(
                        created_at=at,
                        source="auth",
                        event="login.success",
                        level="INFO",
                        user=user,
                        track="logged in",
                        method="POST",
                        path="/login",
                        status=200,
                    )
                )
            elif kind < 0.9:
                rows.append(
                    dict(
                        created_at=at,
                        source="v1",
                        event="api.request",
                        level="INFO",
                        user=user,
                        track="GET /v1/logs?limit=100 -> 200",
                        method="GET",
                        path="/v1/logs",
                        status=200,
                    )
                )
            else:
                rows.append(
                    dict(
                        created_at=at,
                        source="v1",
                        event="api.request",
                        level="WARNING",
                        user=user,
                        track="GET /v1/users -> 403",
                        method="GET",
                        path="/v1/users",
                        status=403,
                    )
                )
    burst = top - 5 * HOUR + timedelta(minutes=12)
    rows += [
        dict(
            created_at=burst + number * timedelta(seconds=7),
            source="auth",
            event="login.failure",
            level="WARNING",
            user="admin",
            ip="198.51.100.23",
            track="invalid password",
            method="POST",
            path="/login",
            status=401,
        )
        for number in range(12)
    ]
    rows += [
        dict(
            created_at=top - 14 * HOUR + timedelta(minutes=41),
            source="app",
            event="request.exception",
            level="ERROR",
            user="bob",
            method="GET",
            path="/v1/logs/export",
            status=500,
            track="psycopg.errors.QueryCanceled: canceling statement due to statement timeout",
        ),
        dict(
            created_at=top - 30 * HOUR + timedelta(minutes=3),
            source="auth",
            event="login.failure",
            level="WARNING",
            user=XSS_USER,
            ip="203.0.113.66",
            track="unknown user",
            method="POST",
            path="/login",
            status=401,
        ),
        dict(
            created_at=top - 30 * HOUR + timedelta(minutes=4),
            source="v1",
            event="api.request",
            level="INFO",
            user="carol",
            track=XSS_TRACK,
            method="GET",
            path="/v1/logs",
            status=200,
        ),
    ]
    for row in rows:
        row.setdefault("ip", "192.0.2.10")
        row.setdefault("user_agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
    return sorted(rows, key=lambda row: row["created_at"])


def chromium_or_fail() -> None:
    """Skip without Chromium or Playwright, but fail under CI, where both must be installed."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "Playwright for Python (the test extra)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have {missing}: the browser tests may not be skipped")
        pytest.skip(f"{missing} is missing: browser tests not run")


@pytest.fixture(scope="module")
def site(sqlite_template, tmp_path_factory):
    """The app served by gunicorn on SQLite, with admin, alice and seeded_trail(); its base URL,
    the seeded rows, and a way to read the database."""
    chromium_or_fail()
    directory = tmp_path_factory.mktemp("browser")
    database = directory / "audit.db"
    shutil.copy(sqlite_template, database)
    url = f"sqlite:///{database}"
    environment = server_environment(url, directory)
    app = create_app(make_settings(url, directory, SECRET_KEY=environment["SECRET_KEY"]))
    top = utcnow().replace(minute=0, second=0, microsecond=0)
    seeded = seeded_trail(top)
    with app.app_context():
        create_user(*ALICE, False)
        for row in seeded:
            writer.write(AuditEvent(**row))
    port, log = free_port(), directory / "server.log"
    try:
        with running(make_run_command(port), environment, log, port) as (client, _):
            yield SimpleNamespace(
                base=client.base_url,
                client=client,
                top=top,
                seeded=seeded,
                rows=partial(rows_of, app),
                log=log,
            )
    finally:
        dispose_engines(app)


def rows_of(app, **where) -> list[Log]:
    """The rows in `app`'s database now, newest first, optionally filtered by column."""
    with app.app_context():
        query = sa.select(Log).where(*(getattr(Log, k) == v for k, v in where.items()))
        found = db.session.scalars(query.order_by(Log.id.desc())).all()
        db.session.expunge_all()
        return found


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site, tmp_path):
    """A fresh browser profile at 1280x900 in UTC, which records every request the page
    makes, every Content-Security-Policy violation and every script error."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        timezone_id="UTC",
        locale="en-GB",
        accept_downloads=True,
    )
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (event) => window.__violations.push(event.violatedDirective + ' ' + event.blockedURI));"
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.requests, page.errors, page.tokens = [], [], []
    page.on("request", lambda request: page.requests.append(request))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.screenshots = tmp_path
    yield page
    try:
        assert page.errors == []
        assert page.evaluate("window.__violations") == []
        assert page.evaluate("window.__xss") is None
        for request in page.requests:  # nothing from elsewhere, and no token in a URL
            assert request.url.startswith((site.base + "/", f"blob:{site.base}/")), request.url
            assert not [token for token in page.tokens if token in request.url], request.url
    finally:
        context.close()


def sign_in(page, site, username: str, password: str) -> None:
    from playwright.sync_api import expect

    page.goto(site.base + "/audit")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#trail")).to_be_visible()
    loaded(page)


def loaded(page) -> None:
    """Wait until the listing and the chart have loaded (the page marks them aria-busy), and
    note the session's token: the `page` fixture checks that no URL ever held it."""
    from playwright.sync_api import expect

    expect(page.locator("#trail")).to_have_attribute("aria-busy", "false")
    token = page.evaluate("sessionStorage.getItem('audit-trail.token')")
    if token and token not in page.tokens:
        page.tokens.append(token)


def apply_filters(page, *, level=(), **fields) -> None:
    """Set the filter form to exactly `fields` (the others empty, the `level`s ticked), apply
    it and wait for the answers."""
    for box in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        page.set_checked(f"#filters input[name=level][value={box}]", box in level)
    for name in ("user", "event", "since", "until", "q"):
        page.fill(f"#filter-{name}", fields.get(name, ""))
    page.select_option("#filter-source", fields.get("source", ""))
    page.select_option("#filter-bucket", fields.get("bucket", "hour"))
    page.click("#filters button[type=submit]")
    loaded(page)


def shown_ids(page) -> list[int]:
    return [
        int(value)
        for value in page.locator("#rows tbody tr").evaluate_all(
            "rows => rows.map(row => row.dataset.id)"
        )
    ]


def column(page, name: str) -> list[str]:
    index = {"level": 3, "source": 4, "event": 5, "user": 6, "track": 9}[name]
    return page.locator(f"#rows tbody tr td:nth-child({index})").all_text_contents()


def local_input(moment: datetime) -> str:
    """A UTC time on the minute as a datetime-local input takes it (the page reads it as UTC)."""
    assert (moment.second, moment.microsecond) == (0, 0)
    return moment.strftime("%Y-%m-%dT%H:%M")


@pytest.mark.serving
def test_signing_in_shows_the_newest_rows_and_a_chart(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    expect(page.locator("#session-user")).to_have_text(ADMIN[0])
    expect(page.locator("#rows tbody tr")).to_have_count(PAGE_SIZE)
    ids = shown_ids(page)
    # Newest first, from the newest row there was: this sign-in's own login, or the row of
    # the chart's request, which may have been answered first.
    [login] = site.rows(event="login.success", user=ADMIN[0])[:1]
    assert login.id in ids[:2]
    assert [row.id for row in site.rows() if row.id <= ids[0]][:PAGE_SIZE] == ids
    assert page.locator("#chart .bar").count() > 5
    page.screenshot(path=page.screenshots / "audit-page.png")


@pytest.mark.serving
def test_the_token_lives_in_session_storage_only(page, site):
    sign_in(page, site, *ADMIN)
    token = page.evaluate("sessionStorage.getItem('audit-trail.token')")
    assert token and len(token) == 43
    assert page.context.cookies() == []
    assert page.evaluate("localStorage.length") == 0
    assert page.tokens == [token]  # and no URL held it (the `page` fixture checks each)
    # It is sent as a bearer token, and only to the API.
    authorized = [
        request
        for request in page.requests
        if request.all_headers().get("authorization") == f"Bearer {token}"
    ]
    assert {request.url.split("?")[0] for request in authorized} == {
        site.base + "/v1/logs",
        site.base + "/v1/logs/stats",
    }


@pytest.mark.serving
def test_filters_select_the_rows(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(
        page,
        user="admin",
        source="auth",
        level=["WARNING"],
        q="PASSWORD",
        until=local_input(site.top),
    )
    expected = [
        row.id
        for row in site.rows(user="admin", source="auth", level="WARNING")
        if "password" in row.track and row.created_at < site.top
    ]
    assert len(expected) == 12  # the burst of seeded_trail()
    expect(page.locator("#rows tbody tr")).to_have_count(len(expected))
    assert shown_ids(page) == expected
    assert set(column(page, "event")) == {"login.failure"}
    assert "level=WARNING" in page.locator("#export-csv").get_attribute("href")


@pytest.mark.serving
def test_a_bad_filter_shows_what_the_api_said(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, since=local_input(site.top), until=local_input(site.top - HOUR))
    expect(page.locator("#filter-error")).to_contain_text("until: must be later than since")


@pytest.mark.serving
def test_load_more_follows_the_cursor_to_the_last_row(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    expect(page.locator("#rows tbody tr")).to_have_count(PAGE_SIZE)
    first = shown_ids(page)[0]
    expected = [row.id for row in site.rows() if row.id <= first]
    assert len(expected) > 2 * PAGE_SIZE  # three pages at least
    for pages in range(2, 100):
        page.click("#load-more")
        expect(page.locator("#rows tbody tr")).to_have_count(min(pages * PAGE_SIZE, len(expected)))
        if pages * PAGE_SIZE >= len(expected):
            break
    expect(page.locator("#load-more")).to_be_hidden()
    assert shown_ids(page) == expected
    expect(page.locator("#rows-status")).to_have_text(f"{len(expected)} rows")


@pytest.mark.serving
def test_a_row_opens_with_every_field(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, event="request.exception")
    [crash] = site.rows(event="request.exception")
    page.click(f"#rows tbody tr[data-id='{crash.id}'] td.track")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(str(crash.id))
    fields = dict(
        zip(
            page.locator("#detail-fields dt").all_text_contents(),
            page.locator("#detail-fields dd").all_text_contents(),
            strict=True,
        )
    )
    assert fields == {
        "id": str(crash.id),
        "created_at": rfc3339(crash.created_at),
        "source": "app",
        "event": "request.exception",
        "level": "ERROR",
        "user": "bob",
        "ip": "192.0.2.10",
        "track": crash.track,
        "method": "GET",
        "path": "/v1/logs/export",
        "status": "500",
        "request_id": "null",
        "user_agent": crash.user_agent,
        "actor_id": "null",
        "token_id": "null",
        "target_type": "null",
        "target_id": "null",
        "target": "null",
        "outcome": "error",
        "details": "{}",
    }
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()


def expected_bars(seeded: list[dict], keep=lambda row: True) -> dict[str, dict[str, int]]:
    """Per hour (its RFC 3339 start): the seeded rows `keep` accepts, counted per level."""
    bars: dict[str, dict[str, int]] = {}
    for row in seeded:
        if keep(row):
            hour = rfc3339(row["created_at"].replace(minute=0, second=0, microsecond=0))
            levels = bars.setdefault(hour, {})
            levels[row["level"]] = levels.get(row["level"], 0) + 1
    return bars


def drawn_bars(page) -> dict[str, dict[str, int]]:
    """What the chart drew: per bar, its start and the count of each of its segments."""
    return page.locator("#chart .bar").evaluate_all("""bars => Object.fromEntries(bars.map(
        bar => [bar.dataset.start, Object.fromEntries([...bar.querySelectorAll('rect')].map(
            rect => [rect.dataset.level, Number(rect.dataset.count)]))]))""")


@pytest.mark.serving
@pytest.mark.parametrize("levels", [[], ["WARNING"]], ids=["every-level", "warnings"])
def test_the_chart_has_a_bar_per_hour_with_rows_stacked_by_level(page, site, levels):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    # Until the top of the hour the trail was seeded up to: no row of the tests themselves.
    apply_filters(page, until=local_input(site.top), level=levels)
    expected = expected_bars(site.seeded, lambda row: not levels or row["level"] in levels)
    assert 5 < len(expected) < 48
    expect(page.locator("#chart .bar")).to_have_count(len(expected))
    assert drawn_bars(page) == expected
    heights = page.locator("#chart .bar").evaluate_all(
        "bars => bars.map(bar => bar.getBBox().height)"
    )
    totals = [sum(levels.values()) for _, levels in sorted(expected.items())]
    tallest = max(totals)
    assert heights[totals.index(tallest)] == pytest.approx(max(heights))
    expect(page.locator("#chart-total")).to_have_text(str(sum(totals)))


@pytest.mark.serving
@pytest.mark.parametrize("format", ["ndjson", "csv"])
def test_the_export_downloads_the_filtered_rows(page, site, format):
    sign_in(page, site, *ADMIN)
    apply_filters(page, event="login.failure", until=local_input(site.top))
    with page.expect_download() as download:
        page.click(f"#export-{format}")
    assert download.value.suggested_filename == f"audit-log.{format}"
    text = Path(download.value.path()).read_text(encoding="utf-8-sig")
    if format == "ndjson":
        exported = [json.loads(line) for line in text.splitlines()]
    else:
        exported = list(csv.DictReader(io.StringIO(text, newline="")))
    expected = [row for row in site.rows(event="login.failure") if row.created_at < site.top][
        ::-1
    ]  # oldest first
    assert [int(row["id"]) for row in exported] == [row.id for row in expected]
    assert len(expected) == 13
    export_requests = [request for request in page.requests if "/v1/logs/export" in request.url]
    assert [request.all_headers().get("authorization", "")[:7] for request in export_requests] == [
        "Bearer "
    ]


@pytest.mark.serving
def test_a_user_who_is_not_an_admin_sees_only_their_own_rows(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ALICE)
    expect(page.locator("#session-role")).to_have_text("(your own rows)")
    ids = shown_ids(page)
    assert len(ids) > 10
    assert ids == [row.id for row in site.rows(user=ALICE[0]) if row.id <= ids[0]][:PAGE_SIZE]
    assert set(column(page, "user")) == {ALICE[0]}


@pytest.mark.serving
def test_signing_out_revokes_the_token_and_forgets_it(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    token = page.evaluate("sessionStorage.getItem('audit-trail.token')")
    with page.expect_response(lambda response: response.url == site.base + "/logout") as logout:
        page.click("#sign-out")
    assert logout.value.status == 200
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#trail")).to_be_hidden()
    expect(page.locator("#notice")).to_have_text("Signed out.")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#rows tbody tr").count() == 0
    row = site.rows(request_id=logout.value.headers["x-request-id"])
    assert [(r.event, r.user, r.status) for r in row] == [("logout", ADMIN[0], 200)]
    assert site.client.get("/v1/me", token=token).status == 401
    page.reload()
    expect(page.locator("#sign-in")).to_be_visible()  # nothing left to sign in with


@pytest.mark.serving
def test_a_failed_sign_in_says_so_without_a_browser_password_dialog(page, site):
    from playwright.sync_api import expect

    cdp = page.context.new_cdp_session(page)
    challenges = []

    def on_auth_required(event):
        challenges.append(event["request"]["url"])
        cdp.send(
            "Fetch.continueWithAuth",
            {"requestId": event["requestId"], "authChallengeResponse": {"response": "CancelAuth"}},
        )

    cdp.on(
        "Fetch.requestPaused",
        lambda event: cdp.send("Fetch.continueRequest", {"requestId": event["requestId"]}),
    )
    cdp.on("Fetch.authRequired", on_auth_required)
    cdp.send("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*/login*"}]})
    page.goto(site.base + "/audit")
    page.fill("#username", ADMIN[0])
    page.fill("#password", "not-the-password")
    with page.expect_response(site.base + "/login") as answer:
        page.click("#sign-in-form button[type=submit]")
    assert answer.value.status == 401
    assert answer.value.headers["www-authenticate"].startswith("Basic")
    expect(page.locator("#sign-in-error")).to_have_text("Wrong user name or password.")
    assert challenges == []  # the browser never asked for a password of its own
    assert page.evaluate("sessionStorage.length") == 0
    cdp.detach()


@pytest.mark.serving
def test_markup_in_the_trail_shows_as_text_and_never_runs(page, site):
    from playwright.sync_api import expect

    # A failed sign-in whose user name is a script: the trail records the name as typed.
    page.goto(site.base + "/audit")
    page.fill("#username", XSS_LOGIN)
    page.fill("#password", "whatever-password")
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-error")).to_be_visible()
    page.fill("#username", ADMIN[0])
    page.fill("#password", ADMIN[1])
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#trail")).to_be_visible()
    loaded(page)
    apply_filters(page, event="login.failure", level=["WARNING"], q="unknown user")
    expect(page.locator("#rows tbody tr")).to_have_count(2)
    assert column(page, "user") == [XSS_LOGIN, XSS_USER]
    apply_filters(page, event="api.request", q="<script>")
    expect(page.locator("#rows tbody tr")).to_have_count(1)
    assert column(page, "track") == [XSS_TRACK]
    page.click("#rows tbody tr td.track")
    expect(page.locator("#detail dd[data-field=track]")).to_have_text(XSS_TRACK)
    # The text is there as text: no element was made of it, and nothing ran (see `page`).
    assert page.locator("#trail script, #trail img").count() == 0
    assert page.evaluate("window.__xss") is None


@pytest.mark.serving
def test_the_page_cannot_be_framed(page, site):
    # A page of the same origin that may frame others (its own policy names no frame-src).
    page.goto(site.base + "/healthz")
    framed = page.evaluate(
        """url => new Promise(resolve => {
        const frame = document.createElement('iframe');
        frame.onload = () => resolve(frame.contentDocument
            ? Boolean(frame.contentDocument.getElementById('sign-in')) : 'blocked');
        setTimeout(() => resolve('no load event'), 5000);
        frame.src = url;
        document.body.append(frame);
    })""",
        site.base + "/audit",
    )
    assert framed == "blocked"


def test_the_screenshot_for_the_readme_is_committed():
    assert (Path(__file__).parents[1] / "docs" / "audit-page.png").stat().st_size > 10_000
