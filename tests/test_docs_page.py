"""GET /docs, the API reference: Swagger UI on /v1/openapi.json, every file served by the app,
under a policy that allows no inline script; in-process, and rendered in headless Chromium."""

import re

import pytest

from backend.main.docs import DOCS_POLICY
from backend.models import Log
from tests.helpers import assert_error
from tests.test_audit_page import parsed
from tests.test_audit_page_browser import browser, page, site  # noqa: F401  (fixtures)


def test_the_docs_page_is_html_naming_the_openapi_document(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    [body] = [attrs for tag, attrs in parsed(response).tags if tag == "body"]
    assert body["data-openapi-url"] == "/v1/openapi.json"


def test_the_docs_page_has_no_inline_script_and_a_policy_that_forbids_one(client):
    response = client.get("/docs")
    assert parsed(response).inline == []
    policy = response.headers["Content-Security-Policy"]
    assert policy == DOCS_POLICY
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_every_file_the_docs_page_loads_is_served_by_the_app(client):
    tags = parsed(client.get("/docs")).tags
    urls = [attrs.get("src") or attrs.get("href") for tag, attrs in tags if tag != "a"]
    urls = [url for url in urls if url]
    assert len(urls) == 5
    for url in urls:
        assert url.startswith("/"), url  # this origin, never a CDN
        with client.get(url) as response:
            assert response.status_code == 200, url
            assert len(response.data) > 100, url
    with client.get("/docs/assets/swagger-ui-bundle.js") as response:
        assert "SwaggerUIBundle" in response.get_data(as_text=True)


def test_only_swagger_uis_release_files_are_served(client):
    assert_error(client.get("/docs/assets/swagger-editor-bundle.js"), 404)
    assert_error(client.get("/docs/assets/..%2F__init__.py"), 404)


def test_viewing_the_docs_page_leaves_a_row(app, client):
    client.get("/docs")
    with app.app_context():
        from backend.extensions import db

        [row] = db.session.query(Log).filter_by(event="docs.view").all()
    assert (row.source, row.level, row.status, row.path) == ("main", "INFO", 200, "/docs")


def test_the_index_links_the_docs_and_the_viewer(client):
    links = client.get("/").get_json()["links"]
    assert links["docs"] == "http://localhost/docs"
    assert links["viewer"] == "http://localhost/audit"


@pytest.mark.serving
def test_the_docs_page_renders_every_operation_in_chromium(page, site):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(site.base + "/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    document = site.client.get("/v1/openapi.json").body
    expected = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    shown = {
        (
            block.locator(".opblock-summary-method").inner_text().strip(),
            re.sub(r"\u200b", "", block.locator(".opblock-summary-path").inner_text().strip()),
        )
        for block in page.locator(".opblock").all()
    }
    assert shown == expected
    expect(page.locator(".info .title")).to_contain_text("Flask audit trail")
    page.screenshot(path=page.screenshots / "docs.png", full_page=False)


@pytest.mark.serving
def test_the_boots_log_links_the_viewer_and_the_docs(site):  # noqa: F811
    log = site.log.read_text()
    assert f"viewer: {site.base}/audit  API reference: {site.base}/docs" in log
