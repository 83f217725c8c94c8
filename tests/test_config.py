"""`config.settings(environ)`: the environment variables of CONTRACT.md, and start-up failures."""

import os
import subprocess
import sys

import pytest
from gunicorn.arbiter import Arbiter

import config
from backend import create_app, dispose_engines
from backend.extensions import db
from config import ConfigError, settings

PG = "postgresql://audit:secret@db.example:5432/audit"


@pytest.fixture
def environ(tmp_path):
    """A minimal environment; its instance folder is a temporary one."""
    return {"INSTANCE_PATH": str(tmp_path)}


def config_error(environ: dict) -> str:
    """The message of the ConfigError that `settings(environ)` raises."""
    with pytest.raises(ConfigError) as raised:
        settings(environ)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_production_without_a_secret_key_is_refused(environ):
    assert "SECRET_KEY" in config_error(environ | {"APP_ENV": "production", "DATABASE_URL": PG})


def test_production_with_an_empty_secret_key_is_refused(environ):
    message = config_error(
        environ | {"APP_ENV": "production", "DATABASE_URL": PG, "SECRET_KEY": ""}
    )
    assert "SECRET_KEY" in message


def test_production_without_a_database_url_is_refused(environ):
    assert "DATABASE_URL" in config_error(environ | {"APP_ENV": "production", "SECRET_KEY": "s"})


def test_production_without_an_audit_signing_key_is_refused(environ):
    message = config_error(
        environ | {"APP_ENV": "production", "DATABASE_URL": PG, "SECRET_KEY": "s"}
    )
    assert "AUDIT_SIGNING_KEY" in message


def test_production_with_all_three_is_accepted(environ):
    result = settings(
        environ
        | {"APP_ENV": "production", "DATABASE_URL": PG, "SECRET_KEY": "s", "AUDIT_SIGNING_KEY": "k"}
    )
    assert (result["APP_ENV"], result["SECRET_KEY"]) == ("production", "s")
    assert result["AUDIT_SIGNING_KEY"] == "k"
    assert result["TESTING"] is False


def test_outside_production_the_signing_key_derives_from_the_secret_key(environ):
    first = settings(environ | {"SECRET_KEY": "s"})["AUDIT_SIGNING_KEY"]
    assert first == settings(environ | {"SECRET_KEY": "s"})["AUDIT_SIGNING_KEY"]
    assert first != settings(environ | {"SECRET_KEY": "t"})["AUDIT_SIGNING_KEY"]
    assert "s" != first


def test_an_unknown_app_env_is_refused(environ):
    message = config_error(environ | {"APP_ENV": "staging"})
    assert "APP_ENV" in message and "staging" in message


def test_app_env_defaults_to_development(environ):
    assert settings(environ)["APP_ENV"] == "development"


@pytest.mark.parametrize("value", ["soon", "1.5", "0", "-60"])
def test_a_token_ttl_that_is_not_a_positive_whole_number_is_refused(environ, value):
    assert "TOKEN_TTL" in config_error(environ | {"TOKEN_TTL": value})


def test_token_ttl_is_read_as_seconds(environ):
    assert settings(environ | {"TOKEN_TTL": "120"})["TOKEN_TTL"] == 120


def test_token_ttl_defaults_to_an_hour(environ):
    assert settings(environ)["TOKEN_TTL"] == 3600


def test_a_negative_trusted_proxy_hops_is_refused(environ):
    assert "TRUSTED_PROXY_HOPS" in config_error(environ | {"TRUSTED_PROXY_HOPS": "-1"})


@pytest.mark.parametrize(
    "value",
    [
        "audit.example.com",
        "ftp://audit.example.com",
        "https://",
        "https:///v1",
        "https://audit.example.com/?next=1",
        "https://audit.example.com/?",
        "https://audit.example.com#top",
        "https://admin:secret@audit.example.com",
        "https://audit.example.com:99999",
        "https://audit.example.com:port",
        "https://audit example.com",
        "https://audit.example.com\n",
    ],
)
def test_a_public_url_that_is_not_an_http_base_url_is_refused(environ, value):
    assert "PUBLIC_URL" in config_error(environ | {"PUBLIC_URL": value})


def test_public_url_is_kept_without_its_trailing_slash(environ):
    result = settings(environ | {"PUBLIC_URL": "https://audit.example.com:8443/audit/"})
    assert result["PUBLIC_URL"] == "https://audit.example.com:8443/audit"


def test_public_url_and_trusted_hosts_default_to_unset(environ):
    assert (settings(environ)["PUBLIC_URL"], settings(environ)["TRUSTED_HOSTS"]) == (None, None)


def test_trusted_hosts_is_a_comma_separated_list(environ):
    result = settings(environ | {"TRUSTED_HOSTS": "audit.example.com, .example.org,127.0.0.1"})
    assert result["TRUSTED_HOSTS"] == ["audit.example.com", ".example.org", "127.0.0.1"]


@pytest.mark.parametrize(
    "value",
    ["audit.example.com,,localhost", "https://audit.example.com", "audit.example.com localhost"],
)
def test_trusted_hosts_that_are_not_host_names_are_refused(environ, value):
    assert "TRUSTED_HOSTS" in config_error(environ | {"TRUSTED_HOSTS": value})


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgresql_urls_use_psycopg_3(environ, scheme):
    url = f"{scheme}://audit:secret@db.example:5432/audit"
    assert settings(environ | {"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"] == (
        "postgresql+psycopg://audit:secret@db.example:5432/audit"
    )


def test_other_database_urls_are_left_alone(environ):
    url = "sqlite:////var/lib/audit/audit.db"
    assert settings(environ | {"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"] == url


def test_the_admin_database_url_defaults_to_the_database_url(environ):
    """A single-role setup: migrations and purges connect as the app does."""
    assert settings(environ | {"DATABASE_URL": PG})["DATABASE_ADMIN_URL"] == (
        "postgresql+psycopg://audit:secret@db.example:5432/audit"
    )


def test_the_admin_database_url_uses_psycopg_3(environ):
    owner = "postgresql://owner:secret@db.example:5432/audit"
    result = settings(environ | {"DATABASE_URL": PG, "DATABASE_ADMIN_URL": owner})
    assert result["DATABASE_ADMIN_URL"] == "postgresql+psycopg://owner:secret@db.example:5432/audit"
    assert result["SQLALCHEMY_DATABASE_URI"] == (
        "postgresql+psycopg://audit:secret@db.example:5432/audit"
    )


def test_the_replica_url_uses_psycopg_3(environ):
    standby = "postgresql://audit:secret@standby.example:5432/audit"
    result = settings(environ | {"DATABASE_URL": PG, "DATABASE_REPLICA_URL": standby})
    assert result["DATABASE_REPLICA_URL"] == (
        "postgresql+psycopg://audit:secret@standby.example:5432/audit"
    )


def test_the_replica_url_defaults_to_none(environ):
    assert settings(environ | {"DATABASE_URL": PG})["DATABASE_REPLICA_URL"] is None


def test_a_replica_url_that_is_not_postgresql_is_refused_without_echoing_it(environ):
    replica = "mysql://audit:hunter2@standby.example/audit"
    message = config_error(environ | {"DATABASE_URL": PG, "DATABASE_REPLICA_URL": replica})
    assert "DATABASE_REPLICA_URL must be a postgresql:// URL" in message
    assert "hunter2" not in message


def test_a_replica_url_beside_a_sqlite_database_is_refused(environ):
    replica = "postgresql://audit:secret@standby.example:5432/audit"
    message = config_error(environ | {"DATABASE_REPLICA_URL": replica})
    assert "DATABASE_REPLICA_URL needs DATABASE_URL to be PostgreSQL" in message


def test_the_default_database_is_sqlite_in_the_instance_folder(environ, tmp_path):
    uri = settings(environ)["SQLALCHEMY_DATABASE_URI"]
    assert uri == f"sqlite:///{tmp_path / 'audit.db'}"


def test_the_development_secret_persists_in_the_instance_folder(environ, tmp_path):
    first = settings(environ)["SECRET_KEY"]
    assert settings(environ)["SECRET_KEY"] == first
    assert (tmp_path / "secret_key").read_text().strip() == first
    assert len(first) >= 32


def test_the_development_secret_is_readable_by_its_owner_only(environ, tmp_path):
    settings(environ)
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_each_instance_folder_gets_its_own_random_secret(tmp_path):
    keys = {settings({"INSTANCE_PATH": str(tmp_path / name)})["SECRET_KEY"] for name in "ab"}
    assert len(keys) == 2


def test_wsgi_in_production_without_a_secret_key_exits_with_one_line(tmp_path):
    environ = {
        "PATH": os.environ["PATH"],
        "APP_ENV": "production",
        "DATABASE_URL": PG,
        "INSTANCE_PATH": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        env=environ,
        cwd=config.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == Arbiter.APP_LOAD_ERROR, result.stderr  # wsgi.APP_LOAD_ERROR
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("environment", "pool_size"),
    [
        ({"GUNICORN_WORKERS": "2"}, 8),
        ({"GUNICORN_WORKERS": "5"}, 8),
        # workers x (pool + 1 audit connection) within config.CONNECTION_BUDGET (80)
        ({"GUNICORN_WORKERS": "13"}, 5),
        ({"GUNICORN_WORKERS": "40"}, 2),
        ({"GUNICORN_WORKERS": "13", "DATABASE_POOL_SIZE": "12"}, 12),
    ],
)
def test_the_request_pool_is_sized_within_the_connection_budget(environ, environment, pool_size):
    app = create_app(settings(environ | environment))
    with app.app_context():
        assert (db.engine.pool.size(), db.engine.pool._max_overflow) == (pool_size, 0)
    dispose_engines(app)


def test_a_bad_pool_size_is_refused_with_its_name(environ):
    with pytest.raises(ConfigError, match="^DATABASE_POOL_SIZE must be at least 1, not 0$"):
        settings(environ | {"DATABASE_POOL_SIZE": "0"})


@pytest.mark.parametrize(
    ("environment", "bounds"),
    [
        ({}, (2, 4, 30)),  # half of the default pool of 8
        ({"DATABASE_POOL_SIZE": "5"}, (2, 2, 30)),
        ({"DATABASE_POOL_SIZE": "1"}, (2, 1, 30)),  # a pool of one: the one export may have it
        (
            {"EXPORTS_PER_USER": "1", "EXPORTS_PER_WORKER": "7", "EXPORT_STALL_TIMEOUT": "5"},
            (1, 7, 5),
        ),
    ],
)
def test_exports_are_bounded_per_user_and_to_under_the_workers_pool(environ, environment, bounds):
    values = settings(environ | environment)
    assert (
        values["EXPORTS_PER_USER"],
        values["EXPORTS_PER_WORKER"],
        values["EXPORT_STALL_TIMEOUT"],
    ) == bounds


def test_exports_may_not_take_the_whole_pool(environ):
    assert config_error(environ | {"DATABASE_POOL_SIZE": "4", "EXPORTS_PER_WORKER": "4"}) == (
        "EXPORTS_PER_WORKER must be less than DATABASE_POOL_SIZE (4), not 4: other requests"
        " need a connection while exports run"
    )
