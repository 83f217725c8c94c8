"""Absolute URLs in answers (the OpenAPI document's `servers`, the links of `/`, the `Link`
header of /v1/logs): never a Host kept from an earlier request; PUBLIC_URL whenever it is set;
and TRUSTED_HOSTS refusing any other Host."""

import pytest

from tests.conftest import bearer
from tests.helpers import assert_error, next_link

EVIL = {"Host": "evil.example"}
PUBLIC = "https://audit.example.com"


def servers(client, headers: dict) -> list[dict]:
    response = client.get("/v1/openapi.json", headers=headers)
    assert response.status_code == 200
    return response.get_json()["servers"]


def links(client, headers: dict) -> dict:
    response = client.get("/", headers=headers)
    assert response.status_code == 200
    return response.get_json()["links"]


def test_the_openapi_document_keeps_no_host_of_an_earlier_request(client):
    servers(client, EVIL)
    assert servers(client, {"Host": "audit.example.net"}) == [{"url": "/"}]


def test_without_public_url_the_openapi_server_is_relative_whatever_the_host(client):
    assert servers(client, EVIL) == [{"url": "/"}]


def test_without_public_url_index_links_follow_each_requests_own_host(client):
    links(client, EVIL)
    assert links(client, {"Host": "audit.example.net"})["me"] == "http://audit.example.net/v1/me"


@pytest.mark.settings(PUBLIC_URL=PUBLIC)
def test_with_public_url_the_openapi_server_is_it_whatever_the_host(client):
    assert servers(client, EVIL) == [{"url": PUBLIC}]


@pytest.mark.settings(PUBLIC_URL=PUBLIC)
def test_with_public_url_every_index_link_uses_it_whatever_the_host(client):
    assert links(client, EVIL) == {
        "login": f"{PUBLIC}/login",
        "logout": f"{PUBLIC}/logout",
        "me": f"{PUBLIC}/v1/me",
        "logs": f"{PUBLIC}/v1/logs",
        "openapi": f"{PUBLIC}/v1/openapi.json",
        "docs": f"{PUBLIC}/docs",
        "viewer": f"{PUBLIC}/audit",
        "health": f"{PUBLIC}/healthz",
        "ready": f"{PUBLIC}/readyz",
    }


@pytest.mark.settings(PUBLIC_URL="https://example.com/audit/")
def test_a_public_url_with_a_path_prefixes_every_link(client):
    assert links(client, EVIL)["me"] == "https://example.com/audit/v1/me"


@pytest.mark.settings(PUBLIC_URL=PUBLIC)
def test_with_public_url_the_next_page_link_uses_it_whatever_the_host(client, users):
    response = client.get("/v1/logs?limit=1", headers=bearer(users["admin"]) | EVIL)
    assert response.status_code == 200
    assert next_link(response).startswith(f"{PUBLIC}/v1/logs?")


@pytest.mark.settings(TRUSTED_HOSTS="audit.example.com,localhost")
def test_a_host_outside_trusted_hosts_is_400(client):
    assert_error(client.get("/", headers=EVIL), 400)


@pytest.mark.settings(TRUSTED_HOSTS="audit.example.com,localhost")
def test_a_host_in_trusted_hosts_is_served(client):
    assert client.get("/healthz", headers={"Host": "audit.example.com:8443"}).status_code == 200
