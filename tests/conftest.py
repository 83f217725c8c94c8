"""Fixtures: an app per test on SQLite and, with TEST_DATABASE_URL, on PostgreSQL too.

Every database test runs once per database. Without TEST_DATABASE_URL the PostgreSQL half is
skipped (and says so); under CI (CI=true) it fails instead, so CI can never pass without it.

TEST_DATABASE_URL is the tables' owner: it migrates, and it tampers. With
TEST_DATABASE_APP_URL too (CI sets it: a second role of the same database), the apps and the
servers of the tests run as that role, with only the privileges backend/roles.py grants it,
as production does; DATABASE_ADMIN_URL gives them the owner.

`make test` runs the tests in parallel (pytest-xdist, a worker a core). The PostgreSQL tests
share one database, which each of them empties: they all run on one worker, one after
another (`pytest_collection_modifyitems` puts them in one xdist group), beside the others.
"""

import fcntl
import os
import shutil
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from flask_migrate import upgrade

import config
from backend import clock, create_app, dispose_engines
from backend.audit.chain import GENESIS
from backend.extensions import db
from backend.models import Log

if TYPE_CHECKING:
    from tests.pgcluster import PrivateCluster

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_DATABASE_APP_URL = os.environ.get("TEST_DATABASE_APP_URL")
ADMIN = ("admin", "admin-password-1")
ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-1")
# argon2id at a small cost: `cheap_passwords`.
CHEAP_KDF = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_settings(database_url: str, instance_path, **environ) -> dict:
    """Settings as `config.settings` builds them from an environment of only these values."""
    return config.settings(
        {
            "APP_ENV": "testing",
            **database_environment(database_url),
            "SECRET_KEY": "test-secret-key",
            "INSTANCE_PATH": str(instance_path),
            **environ,
        }
    )


def database_environment(database_url: str) -> dict:
    """DATABASE_URL and DATABASE_ADMIN_URL of an app, or a server, on this test database."""
    return {"DATABASE_URL": database_url, "DATABASE_ADMIN_URL": owner_url(database_url)}


def owner_url(database_url: str) -> str:
    """The URL of the tables' owner of a test database: TEST_DATABASE_URL for
    TEST_DATABASE_APP_URL (in either spelling), else `database_url` itself."""
    sqlalchemy_url = config.database_url_for_sqlalchemy
    if TEST_DATABASE_APP_URL and (
        sqlalchemy_url(database_url) == sqlalchemy_url(TEST_DATABASE_APP_URL)
    ):
        return sqlalchemy_url(TEST_DATABASE_URL)
    return database_url


def migrate_to_head(database_url: str, instance_path) -> None:
    app = create_app(make_settings(database_url, instance_path))
    with app.app_context():
        upgrade()
    dispose_engines(app)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite file migrated once; each test gets a copy."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    path = directory / "template.db"
    migrate_to_head(f"sqlite:///{path}", directory)
    return path


# What a test reaches TEST_DATABASE_URL's database through (besides `database_url`'s
# "postgresql" parameter).
POSTGRESQL_FIXTURES = {"postgresql_url"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """xdist's groups (`--dist loadgroup`: a group runs on one worker): the tests of the
    shared PostgreSQL database in one; the others by module, so that a module's fixtures
    (a private cluster, a served app, a browser) start once."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        parameter = callspec.params.get("database_url") if callspec else None
        if parameter == "postgresql" or POSTGRESQL_FIXTURES & set(item.fixturenames):
            group = "postgresql"
        else:
            group = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def postgresql_url(tmp_path_factory):
    """TEST_DATABASE_URL, emptied and migrated once for the session; the URL the apps run as
    (TEST_DATABASE_APP_URL's role, when it is set)."""
    if not TEST_DATABASE_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set TEST_DATABASE_URL: the PostgreSQL tests may not be skipped")
        pytest.skip("TEST_DATABASE_URL is not set: PostgreSQL tests not run")
    with _only_worker_on_postgresql(tmp_path_factory):
        url = config.database_url_for_sqlalchemy(TEST_DATABASE_APP_URL or TEST_DATABASE_URL)
        drop_schema(url)
        migrate_to_head(url, tmp_path_factory.mktemp("pg-migrate"))
        yield url


@contextmanager
def _only_worker_on_postgresql(tmp_path_factory) -> Iterator[None]:
    """Fail, never race, when a second xdist worker reaches the shared database: a test that
    the group above missed (an flock, held for the session, in the run's common directory)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        yield
        return
    run_directory = tmp_path_factory.getbasetemp().parent  # the same for all of a run's workers
    with (run_directory / "postgresql.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.fail(
                f"worker {worker} reached TEST_DATABASE_URL while another worker uses it: a"
                " fixture of this test reaches PostgreSQL without asking for `postgresql_url`"
                " (conftest.POSTGRESQL_FIXTURES)"
            )
        yield


def drop_schema(url: str) -> None:
    """An empty PostgreSQL database: its public schema dropped and made anew (CI's role cannot
    create a database); what a fresh volume of the compose file's db service holds. As the
    tables' owner, whichever role's URL is given."""
    engine = sa.create_engine(owner_url(url))
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


# A database test that is about PostgreSQL alone (its own code path or its own settings).
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "audit.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgresql_url")
    empty_postgresql(url)
    return url


def empty_postgresql(url: str) -> None:
    """Back to a freshly migrated state. The trail's tables are append-only, so this deletes
    them the one sanctioned way, under a purge permit (as the tables' owner), and resets the
    chain's head: in one transaction and one message (it runs before every PostgreSQL test)."""
    with _owner_engine(owner_url(url)).begin() as connection:
        connection.exec_driver_sql(_EMPTY_POSTGRESQL)


@cache
def _owner_engine(url: str) -> sa.Engine:
    """No pool: a session held open between tests would be seen by those that count the
    database's sessions, or cut by those that cut them."""
    return sa.create_engine(url, poolclass=sa.NullPool)


_EMPTY_POSTGRESQL = f"""
    DELETE FROM audit_hold;
    DELETE FROM audit_sink_cursor;
    INSERT INTO audit_purge_permit (id) VALUES (1);
    DELETE FROM audit_log;
    DELETE FROM audit_checkpoint;
    DELETE FROM audit_tree_node;
    DELETE FROM audit_tree_tile;
    DELETE FROM audit_tree_head;
    DELETE FROM audit_signing_key;
    DELETE FROM audit_purge_permit;
    UPDATE audit_chain SET last_id = 0, last_hash = '{GENESIS}', last_created_at = NULL,
        since_checkpoint = 0, tree_frontier = '', tree_head_at = NULL;
    TRUNCATE tokens, users, login_throttles RESTART IDENTITY CASCADE
"""


@pytest.fixture
def app(request, database_url, tmp_path):
    """The app on each database; `@pytest.mark.settings(NAME=value)` adds to its environment."""
    marker = request.node.get_closest_marker("settings")
    app = create_app(make_settings(database_url, tmp_path, **(marker.kwargs if marker else {})))
    yield app
    dispose_engines(app)


@pytest.fixture
def served(database_url, tmp_path):
    """`make run`'s gunicorn on each database (tests/serving.py): (client, server output)."""
    from tests.serving import serving  # tests/serving.py imports this module

    with serving(database_url, tmp_path) as client_and_log:
        yield client_and_log


@pytest.fixture
def sinks_file(tmp_path):
    """Where a test writes the relay's sinks file (tests/relaying.py `write_sinks`)."""
    return tmp_path / "sinks.toml"


@pytest.fixture
def relay_app(database_url, tmp_path, sinks_file):
    """The app on each database with AUDIT_SINKS_FILE at `sinks_file`."""
    app = create_app(make_settings(database_url, tmp_path, AUDIT_SINKS_FILE=str(sinks_file)))
    yield app
    dispose_engines(app)


@pytest.fixture
def receiver():
    """A webhook receiver on a loopback port (tests/relaying.py)."""
    from tests.relaying import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def stopped_clock():
    """The app's clock stopped for the test (backend.clock.stopped): a lock's Retry-After is
    the lock's full length, however long the requests before took."""
    with clock.stopped():
        yield


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class Api:
    """Repeated actions of the tests: create users, log in, call /v1 with a token."""

    def __init__(self, app, client):
        self.app = app
        self.client = client

    def create_user(self, username: str, password: str, is_admin: bool = False) -> None:
        from backend.accounts import create_user

        with self.app.app_context():
            create_user(username, password, is_admin)

    def login(self, username: str, password: str) -> str:
        response = self.client.post("/login", headers=basic(username, password))
        assert response.status_code == 200, response.get_json()
        return response.get_json()["token"]

    def issue_token(self, username: str) -> str:
        """A live token for `username`, stored straight in the database: no login, so no
        lockout can refuse it, and no audit row."""
        from backend.clock import utcnow
        from backend.models import Token, User
        from backend.security import new_token

        token, digest = new_token()
        with self.app.app_context():
            user = db.session.scalar(sa.select(User).where(User.username == username))
            now = utcnow()
            db.session.add(
                Token(digest=digest, user=user, created_at=now, expires_at=now + timedelta(hours=1))
            )
            db.session.commit()
        return token

    def get(self, path: str, token: str | None = None, **kwargs):
        return self.client.get(path, headers=bearer(token) if token else {}, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs):
        return self.client.post(path, headers=bearer(token) if token else {}, **kwargs)

    def rows(self, **where) -> list[Log]:
        """The audit rows in the database, oldest first, optionally filtered by column."""
        with self.app.app_context():
            query = sa.select(Log).where(*(getattr(Log, k) == v for k, v in where.items()))
            rows = db.session.scalars(query.order_by(Log.id)).all()
            db.session.expunge_all()
            return rows


@pytest.fixture
def api(app, client):
    return Api(app, client)


@pytest.fixture
def users(api, cheap_passwords):
    """An admin, and two ordinary users; returns their tokens by name (each a real login)."""
    api.create_user(*ADMIN, is_admin=True)
    api.create_user(*ALICE)
    api.create_user(*BOB)
    return {name: api.login(name, password) for name, password in (ADMIN, ALICE, BOB)}


@pytest.fixture
def cheap_passwords(monkeypatch):
    """Passwords hashed and checked with argon2id at a small cost meanwhile (one pass over 1
    MiB), in the spirit of Django's advice of a fast hasher for tests: at the service's cost
    (19 MiB, two passes) a hash or a check takes ~45 ms here, and the three logins of `users`
    were most of a test's setup. Every step of a login is as before. The tests of the
    service's own parameters (test_login_security.py: OWASP strength, the upgrade of older
    hashes at login, the same time for an unknown user) use no `users`."""
    from backend import security

    monkeypatch.setattr(security, "_hasher", CHEAP_KDF)


def basic(username: str, password: str) -> dict:
    credentials = b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wsgi_header(text: str) -> str:
    """A header value as a WSGI server puts it in the environ (PEP 3333): the bytes the client
    sent, here `text` in UTF-8, decoded as Latin-1."""
    return text.encode("utf-8").decode("latin-1")


@pytest.fixture(scope="module")
def cluster() -> Iterator["PrivateCluster"]:
    """A private PostgreSQL cluster (tests/pgcluster.py) for the module that asks for it: its
    tests may stop or restart it without touching the shared server."""
    from tests.pgcluster import private_cluster  # pgcluster -> serving -> this module

    with private_cluster() as cluster:
        yield cluster
