"""The viewer for investigators, in Chromium (issue "A newcomer's first hour", item 6): filters
in the page's URL (reload, back, a shared link), the address filter, a click on a value to
filter by it, the viewer's own reads hidden unless asked for, the trail's integrity, a page that
fits 1280 px with a detail that covers no control, 24-hour UTC times, and rows from the
keyboard. The server, the browser and the seeded trail are tests/test_audit_page_browser.py's.
"""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ALICE
from tests.serving import ADMIN
from tests.test_audit_page_browser import (  # noqa: F401  (browser, page, site: fixtures)
    apply_filters,
    browser,
    column,
    loaded,
    own_read,
    page,
    shown_ids,
    sign_in,
    site,
)

pytestmark = pytest.mark.serving
BURST_IP = "198.51.100.23"  # seeded_trail()'s twelve failed logins against admin


def page_query(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def sign_in_at(page, url: str, username: str, password: str) -> None:
    """Open `url` (a link someone shared), then sign in there."""
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#trail")).to_be_visible()
    loaded(page)


def test_the_filters_are_in_the_page_url_and_a_reload_keeps_them(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, user="admin", level=["WARNING"])
    assert page_query(page) == {"user": ["admin"], "level": ["WARNING"]}
    before = shown_ids(page)
    page.reload()
    loaded(page)
    expect(page.locator("#filter-user")).to_have_value("admin")
    expect(page.locator("#filters input[name=level][value=WARNING]")).to_be_checked()
    assert shown_ids(page) == before


def test_the_back_button_returns_to_the_previous_filters(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, user="carol")
    apply_filters(page, user="bob")
    assert set(column(page, "user")) == {"bob"}
    page.go_back()
    loaded(page)
    expect(page.locator("#filter-user")).to_have_value("carol")
    expect(page.locator("#rows tbody tr td.user").first).to_have_text("carol")
    assert set(column(page, "user")) == {"carol"}


def test_a_shared_link_opens_with_its_filters_after_signing_in(page, site):
    from playwright.sync_api import expect

    sign_in_at(page, f"{site.base}/audit?ip={BURST_IP}&level=WARNING", *ADMIN)
    expect(page.locator("#filter-ip")).to_have_value(BURST_IP)
    expected = [row.id for row in site.rows(ip=BURST_IP, level="WARNING")]
    assert len(expected) == 12
    assert shown_ids(page) == expected


def test_the_address_filter_selects_the_rows_of_one_address(page, site):
    sign_in(page, site, *ADMIN)
    page.fill("#filter-ip", BURST_IP)
    page.click("#filters button[type=submit]")
    loaded(page)
    assert shown_ids(page) == [row.id for row in site.rows(ip=BURST_IP)]


@pytest.mark.parametrize(("name", "value"), [("user", "carol"), ("ip", BURST_IP)])
def test_clicking_a_value_filters_the_rows_by_it(page, site, name, value):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    if name == "ip":
        apply_filters(page, level=["WARNING"])  # the burst's rows, on the first page
    page.locator(f"#rows tbody td.{name} button.filter-by", has_text=value).first.click()
    loaded(page)
    expect(page.locator(f"#filter-{name}")).to_have_value(value)
    assert page_query(page)[name] == [value]
    assert set(page.locator(f"#rows tbody td.{name}").all_text_contents()) == {value}
    expect(page.locator("#detail")).to_be_hidden()  # a value filters; it opens nothing


def test_clicking_a_level_shows_that_level_only(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    page.locator("#rows tbody td.level button.filter-by", has_text="WARNING").first.click()
    loaded(page)
    expect(page.locator("#filters input[name=level]:checked")).to_have_count(1)
    assert set(column(page, "level")) == {"WARNING"}


def test_my_own_reads_are_hidden_until_the_switch_shows_them(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    for _ in range(3):  # each look at the trail reads it twice: the rows and the chart
        page.click("#filters button[type=submit]")
        loaded(page)
    shown = set(shown_ids(page))
    mine = {row.id for row in site.rows(user=ADMIN[0]) if own_read(row, ADMIN[0])}
    assert len(mine) >= 6 and not shown & mine
    page.check("#filter-own-reads")
    page.click("#filters button[type=submit]")
    loaded(page)
    assert page_query(page) == {"own_reads": ["include"]}
    newest = [row.id for row in site.rows() if row.id <= shown_ids(page)[0]][:50]
    assert shown_ids(page) == newest
    expect(page.locator("#rows tbody td.event", has_text="api.request").first).to_be_visible()


def test_an_admin_sees_the_trail_verified_as_intact(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    expect(page.locator("#integrity-verdict")).to_have_text("unknown")
    page.click("#verify")
    expect(page.locator("#integrity-verdict")).to_have_text("intact")
    expect(page.locator("#integrity")).to_have_attribute("data-state", "intact")
    expect(page.locator("#integrity-detail")).to_contain_text("rows checked at")


def test_a_user_who_may_not_verify_sees_unknown_and_why(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ALICE)
    expect(page.locator("#verify")).to_be_hidden()
    expect(page.locator("#integrity-verdict")).to_have_text("unknown")
    expect(page.locator("#integrity-detail")).to_have_text(
        "only an admin can verify the whole trail"
    )


def overflows(page) -> int:
    """How many pixels the page is wider than the window (0: no horizontal scroll bar)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def test_the_page_fits_1280_pixels_with_and_without_a_row_open(page, site):
    sign_in(page, site, *ADMIN)
    apply_filters(page, q="statement timeout")  # the crash: the longest track of the trail
    assert overflows(page) <= 0
    page.click("#rows tbody tr td.track")
    assert overflows(page) <= 0


def boxes_overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_the_open_row_covers_no_control(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    page.click("#rows tbody tr:nth-child(3) td.track")
    expect(page.locator("#detail")).to_be_visible()
    for scrolled in (0, 400):
        page.evaluate(f"window.scrollTo(0, {scrolled})")
        detail = page.locator("#detail").bounding_box()
        controls = page.locator(
            "button:visible, input:visible, select:visible, a:visible"
        ).evaluate_all(
            """elements => elements.filter(e => !e.closest('#detail')).map(e => {
                const box = e.getBoundingClientRect();
                return {id: e.id || e.textContent, x: box.x, y: box.y,
                        width: box.width, height: box.height};
            })"""
        )
        assert len(controls) > 20
        covered = [box["id"] for box in controls if boxes_overlap(box, detail)]
        assert covered == []
    expect(page.locator("#sign-out")).to_be_visible()


def test_times_are_typed_in_24_hour_utc(page, site):
    from playwright.sync_api import expect

    since = site.top - timedelta(hours=5)  # 24-hour: e.g. 13:00, never "1:00 PM"
    typed = since.strftime("%Y-%m-%d %H:%M")
    sign_in(page, site, *ADMIN)
    assert page.locator("#filter-since").get_attribute("type") is None  # text, not a 12-hour clock
    page.fill("#filter-since", typed)
    page.fill("#filter-user", "admin")
    page.click("#filters button[type=submit]")
    loaded(page)
    assert page_query(page)["since"] == [since.strftime("%Y-%m-%dT%H:%M:00Z")]
    expected = [row.id for row in site.rows(user="admin") if row.created_at >= since]
    expected = [row_id for row_id in expected if row_id <= shown_ids(page)[0]]
    assert (
        shown_ids(page)
        == [
            row.id
            for row in site.rows(user="admin")
            if row.id in expected and not own_read(row, ADMIN[0])
        ][:50]
    )
    page.reload()
    loaded(page)
    expect(page.locator("#filter-since")).to_have_value(typed + ":00")


def test_a_date_alone_means_its_midnight_utc(page, site):
    day = (site.top - timedelta(days=1)).strftime("%Y-%m-%d")
    sign_in(page, site, *ADMIN)
    apply_filters(page, until=day, user="carol")
    assert page_query(page)["until"] == [day]
    midnight = (site.top - timedelta(days=1)).replace(hour=0)
    assert (
        shown_ids(page)
        == [row.id for row in site.rows(user="carol") if row.created_at < midnight][:50]
    )


def test_rows_open_and_close_from_the_keyboard(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    first = shown_ids(page)[0]
    page.focus(f"#rows tbody tr[data-id='{first}'] button.open")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(str(first))
    expect(page.locator("#detail-close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator(f"#rows tbody tr[data-id='{first}'] button.open")).to_be_focused()
    page.keyboard.press("Tab")  # on to the row's first value, a filter
    assert page.evaluate("document.activeElement.className") == "filter-by"


def test_an_address_clicked_then_a_row_opened_shows_its_fields_beside_the_rows(page, site):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, level=["WARNING"])
    page.locator("#rows tbody td.ip button.filter-by", has_text=BURST_IP).first.click()
    loaded(page)
    page.locator("#verify").click()
    expect(page.locator("#integrity-verdict")).to_have_text("intact")
    page.click("#rows tbody tr:nth-child(2) td.track")
    expect(page.locator("#detail-fields dd[data-field=ip]")).to_have_text(BURST_IP)
    page.screenshot(path=page.screenshots / "viewer-investigation.png")


# --- the structured record (#17, item 8): actor and target, outcome, changes ---------------------


@pytest.fixture
def disabled_dave(site) -> str:
    """An admin creates dave and disables him through the API: rows whose target is dave, one
    with changes. Returns the name (unique to the test, the site being shared)."""
    name = f"dave{len(site.rows())}"
    token = site.client.post("/login", basic=ADMIN).body["token"]
    created = site.client.post(
        "/v1/users", token=token, json_body={"username": name, "password": "dave-password-1"}
    )
    assert created.status == 201
    changed = site.client.call(
        "PATCH", f"/v1/users/{created.body['id']}", token=token, json_body={"disabled": True}
    )
    assert changed.status == 200
    return name


def test_actor_and_target_are_columns_and_a_target_filters(page, site, disabled_dave):
    sign_in(page, site, *ADMIN)
    page.fill("#filter-target", disabled_dave)
    page.click("#filters button[type=submit]")
    loaded(page)
    expected = site.rows(target=disabled_dave)  # each act, and the request that made it
    assert [row.event for row in expected] == [
        "api.request",
        "user.disable",
        "api.request",
        "user.create",
    ]
    assert shown_ids(page) == [row.id for row in expected]
    assert column(page, "user") == [ADMIN[0]] * 4
    assert column(page, "target") == [disabled_dave] * 4
    assert page_query(page) == {"target": [disabled_dave]}


def test_clicking_a_target_filters_by_it(page, site, disabled_dave):
    sign_in(page, site, *ADMIN)
    page.locator("#rows tbody td.target button.filter-by", has_text=disabled_dave).first.click()
    loaded(page)
    assert set(column(page, "target")) == {disabled_dave}


def test_the_outcome_filter_selects_rows_by_outcome(page, site, disabled_dave):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    page.check("#filters input[name=outcome][value=denied]")
    page.check("#filters input[name=outcome][value=failure]")
    page.click("#filters button[type=submit]")
    loaded(page)
    assert page_query(page)["outcome"] == ["failure,denied"]
    expected = [row.id for row in site.rows() if row.outcome in ("failure", "denied")][:50]
    assert expected and shown_ids(page) == expected
    page.reload()
    loaded(page)
    expect(page.locator("#filters input[name=outcome]:checked")).to_have_count(2)


def test_a_rows_changes_show_as_old_to_new_in_its_detail(page, site, disabled_dave):
    from playwright.sync_api import expect

    sign_in(page, site, *ADMIN)
    apply_filters(page, event="user.disable")
    [row] = [row for row in site.rows(event="user.disable") if row.target == disabled_dave]
    page.click(f"#rows tbody tr[data-id='{row.id}'] td.track")
    details = page.locator("#detail-fields dd[data-field=details]")
    expect(details.locator(".change")).to_have_text(["disabled: false -> true"])
    expect(page.locator("#detail-fields dd[data-field=outcome]")).to_have_text("success")
    expect(page.locator("#detail-fields dd[data-field=target]")).to_have_text(disabled_dave)
