"""GET /audit, the audit trail's page as the app serves it, asked in-process (on SQLite and
PostgreSQL): the page, its headers, its files, and the row its view leaves.

tests/test_audit_page_browser.py drives the same page in a real browser.
"""

from html.parser import HTMLParser

import pytest
from flask import template_rendered

from backend.audit import subscribers
from backend.audit.group_commit import AuditUnavailable
from backend.signals import main_log
from tests.helpers import assert_error

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
)


class PageParser(HTMLParser):
    """Every start tag of a page with its attributes, and the text inside <script>/<style>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline: list[str] = []
        self._inside = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._inside = None

    def handle_data(self, data):
        if self._inside and data.strip():
            self.inline.append(data)


def parsed(response) -> PageParser:
    parser = PageParser()
    parser.feed(response.get_data(as_text=True))
    return parser


def test_the_page_is_html(client):
    response = client.get("/audit")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert "<title>Audit trail · flask-audit-trail</title>" in response.get_data(as_text=True)


def test_the_page_names_the_api_it_reads(client):
    [body] = [attrs for tag, attrs in parsed(client.get("/audit")).tags if tag == "body"]
    assert {name: value for name, value in body.items() if name.startswith("data-")} == {
        "data-login-url": "/login",
        "data-logout-url": "/logout",
        "data-logs-url": "/v1/logs",
        "data-stats-url": "/v1/logs/stats",
        "data-export-url": "/v1/logs/export",
        "data-verify-url": "/v1/logs/verify",
        "data-stream-url": "/v1/logs/stream",
    }


def test_the_page_has_a_strict_content_security_policy(client):
    response = client.get("/audit")
    assert response.headers["Content-Security-Policy"] == PAGE_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_api_keeps_its_own_policy(api, users):
    response = api.get("/v1/me", users["alice"])
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert "Referrer-Policy" not in response.headers


def test_the_page_has_no_inline_script_style_or_handler_and_nothing_from_elsewhere(client):
    page = parsed(client.get("/audit"))
    assert page.inline == []
    assert not [tag for tag, _ in page.tags if tag == "style"]
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag
        for name in ("src", "href", "action"):
            if name in attrs:
                assert attrs[name].startswith("/"), (tag, attrs[name])
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"src": "/audit/static/audit.js", "defer": None}]


def test_the_sign_in_form_posts_so_a_password_never_lands_in_a_url(client):
    forms = {
        attrs["id"]: attrs for tag, attrs in parsed(client.get("/audit")).tags if tag == "form"
    }
    assert (forms["sign-in-form"]["method"], forms["sign-in-form"]["action"]) == ("post", "/login")


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("audit.js", "text/javascript"),
        ("audit.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_the_page_files_are_served_by_the_app(client, name, media_type):
    with client.get(f"/audit/static/{name}") as response:
        assert response.status_code == 200
        assert response.mimetype == media_type
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_script_never_parses_data_as_html(client):
    with client.get("/audit/static/audit.js") as response:
        script = response.get_data(as_text=True)
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "document.cookie",
    ):
        assert sink not in script.replace("innerHTML and its kin", ""), sink


def test_a_page_view_is_announced_on_main_log_and_recorded(app, api, client):
    announced = []
    with main_log.connected_to(lambda sender, **event: announced.append((sender, event)), app):
        response = client.get("/audit")
    assert announced == [
        (
            app,
            {
                "event": "audit.view",
                "level": "INFO",
                "status": 200,
                "track": "GET /audit -> audit.html",
            },
        )
    ]
    [row] = api.rows()
    assert (
        row.source,
        row.event,
        row.level,
        row.user,
        row.method,
        row.path,
        row.status,
        row.track,
        row.request_id,
    ) == (
        "main",
        "audit.view",
        "INFO",
        None,
        "GET",
        "/audit",
        200,
        "GET /audit -> audit.html",
        response.headers["X-Request-ID"],
    )


def test_the_page_renders_one_template_and_no_audit_data(app, client):
    rendered = []
    with template_rendered.connected_to(
        lambda sender, template, context, **extra: rendered.append((template, context)), app
    ):
        client.get("/audit")
    [(template, context)] = rendered
    assert template.name == "audit.html"
    assert {"service", "version", "levels", "sources", "urls"} <= set(context)
    assert not {"rows", "items", "token", "user", "current_user"} & set(context)


def test_the_page_files_and_api_are_not_page_views(api, client, users):
    with client.get("/audit/static/audit.js"):
        pass
    client.get("/")
    assert [row.event for row in api.rows(source="main")] == ["index.view"]


def test_a_page_view_that_cannot_be_recorded_is_not_served(client, monkeypatch):
    def unavailable(event):
        raise AuditUnavailable()

    monkeypatch.setattr(subscribers, "write", unavailable)
    assert_error(client.get("/audit"), 503)
