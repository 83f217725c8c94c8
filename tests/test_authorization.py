"""Who may call what: every route against anonymous, a user, another user and an admin.

"user" is alice and "other" is bob, acting on alice's resources (her id, her audit row) where
a route has any. Every 401 must carry WWW-Authenticate; a refusal must not tell whether the
thing asked for exists.
"""

from dataclasses import dataclass, field

import pytest

from tests.conftest import ADMIN, ALICE, BOB, basic, bearer

ROLES = ("anonymous", "user", "other", "admin")
CREDENTIALS = {"user": ALICE, "other": BOB, "admin": ADMIN}
MISSING = 999_999


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # as Flask's url_map spells it
    expected: tuple[int, int, int, int]  # by ROLES
    path: str = ""  # the rule filled in; {alice} is alice's user id, {row} one of her rows
    body: dict | None = field(default=None, hash=False)
    login: bool = False  # credentials go as HTTP Basic, not as a bearer token
    body_per_role: bool = False  # body["current_password"] is the caller's own
    endless: bool = False  # a live stream: its answer is closed, not read to an end it lacks

    @property
    def id(self) -> str:
        return f"{self.method} {self.path or self.rule}"


MATRIX = [
    Route("GET", "/", (200, 200, 200, 200)),
    Route("GET", "/healthz", (200, 200, 200, 200)),
    Route("GET", "/readyz", (200, 200, 200, 200)),
    Route("GET", "/static/<path:filename>", (404, 404, 404, 404), path="/static/app.js"),
    # The browser viewer: a page and its files, the same for everyone (the data needs a token).
    Route("GET", "/audit", (200, 200, 200, 200)),
    Route(
        "GET", "/audit/static/<path:filename>", (200, 200, 200, 200), path="/audit/static/audit.js"
    ),
    Route(
        "GET",
        "/audit/static/<path:filename>",
        (404, 404, 404, 404),
        path="/audit/static/missing.js",
    ),
    # The API reference: a page and Swagger UI's files, the same for everyone.
    Route("GET", "/docs", (200, 200, 200, 200)),
    Route("GET", "/docs/assets/<name>", (200, 200, 200, 200), path="/docs/assets/swagger-ui.css"),
    Route("GET", "/v1/openapi.json", (200, 200, 200, 200)),
    Route("POST", "/login", (401, 200, 200, 200), login=True),
    Route("GET", "/logout", (401, 200, 200, 200)),
    Route("GET", "/v1/me", (401, 200, 200, 200)),
    Route(
        "PUT",
        "/v1/me/password",
        (401, 200, 200, 200),
        body_per_role=True,
        body={"new_password": "a-new-password-1"},
    ),
    Route("GET", "/v1/users", (401, 403, 403, 200)),
    Route(
        "POST",
        "/v1/users",
        (401, 403, 403, 201),
        body={"username": "carol", "password": "carol-password-1"},
    ),
    Route(
        "PATCH",
        "/v1/users/<int:user_id>",
        (401, 403, 403, 200),
        path="/v1/users/{alice}",
        body={"disabled": True},
    ),
    Route(
        "PATCH",
        "/v1/users/<int:user_id>",
        (401, 403, 403, 404),
        path=f"/v1/users/{MISSING}",
        body={"disabled": True},
    ),
    Route("GET", "/v1/logs", (401, 200, 200, 200)),
    Route("GET", "/v1/logs/<int:log_id>", (401, 200, 404, 200), path="/v1/logs/{row}"),
    Route("GET", "/v1/logs/<int:log_id>", (401, 404, 404, 404), path=f"/v1/logs/{MISSING}"),
    Route("GET", "/v1/logs/export", (401, 200, 200, 200)),
    Route("GET", "/v1/logs/stats", (401, 200, 200, 200)),
    Route("GET", "/v1/logs/verify", (401, 403, 403, 200)),
    Route("GET", "/v1/logs/stream", (401, 200, 200, 200), endless=True),
    Route("GET", "/v1/sinks", (401, 403, 403, 200)),
    # 404 for everyone while METRICS_TOKEN is unset (tests/test_metrics.py for the token).
    Route("GET", "/metrics", (404, 404, 404, 404)),
    # The Merkle tree: the keys are public (CONTRACT.md), a row's proof follows the row's rule.
    Route("GET", "/v1/logs/keys", (200, 200, 200, 200)),
    Route("GET", "/v1/logs/tree-head", (401, 200, 200, 200)),
    Route(
        "GET",
        "/v1/logs/<int:log_id>/proof",
        (401, 200, 404, 200),
        path="/v1/logs/{row}/proof",
    ),
    Route(
        "GET",
        "/v1/logs/<int:log_id>/proof",
        (401, 404, 404, 404),
        path=f"/v1/logs/{MISSING}/proof",
    ),
    Route(
        "GET",
        "/v1/logs/consistency",
        (401, 200, 200, 200),
        path="/v1/logs/consistency?first=1&second=2",
    ),
]


def call(api, route: Route, role: str, users: dict, ids: dict):
    """Send `route` as `role`: a bearer token, or HTTP Basic at /login, or nothing."""
    headers = {}
    if role != "anonymous":
        headers = basic(*CREDENTIALS[role]) if route.login else bearer(users[CREDENTIALS[role][0]])
    body = route.body
    if route.body_per_role and role != "anonymous":
        body = {**body, "current_password": CREDENTIALS[role][1]}
    path = (route.path or route.rule).format(**ids)
    response = api.client.open(path, method=route.method, headers=headers, json=body)
    if not route.endless:
        response.get_data()  # a streamed answer (the export) is read to its end, as clients do
    response.close()  # ... and closed: a static file's answer holds the file open until then
    return response


@pytest.fixture
def ids(api, users):
    """Alice's user id, and the id of one audit row about her (her login)."""
    alice = api.get("/v1/me", users["alice"]).get_json()["id"]
    row = api.rows(event="login.success", user="alice")[0].id
    return {"alice": alice, "row": row}


@pytest.mark.parametrize("route", MATRIX, ids=[route.id for route in MATRIX])
def test_each_role_gets_the_expected_status(api, users, ids, route):
    statuses = {}
    for role in ROLES:
        response = call(api, route, role, users, ids)
        statuses[role] = response.status_code
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"].split()[0] in ("Basic", "Bearer")
    assert statuses == dict(zip(ROLES, route.expected, strict=True))


def test_the_matrix_covers_every_route(app):
    routed = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routed == {(route.method, route.rule) for route in MATRIX}


def test_a_refused_update_looks_the_same_whether_the_user_exists_or_not(api, users, ids):
    existing, missing = (
        api.client.patch(path, json={"disabled": True}, headers=bearer(users["bob"]))
        for path in (f"/v1/users/{ids['alice']}", f"/v1/users/{MISSING}")
    )
    assert existing.status_code == missing.status_code == 403
    assert existing.data == missing.data


def test_another_users_row_looks_the_same_as_a_missing_one(api, users, ids):
    theirs = api.get(f"/v1/logs/{ids['row']}", users["bob"])
    missing = api.get(f"/v1/logs/{MISSING}", users["bob"])
    assert theirs.status_code == missing.status_code == 404
    assert theirs.data == missing.data
