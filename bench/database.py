"""The bench's own PostgreSQL database: created empty (dropped first), migrated to head; the
environment the bench's app runs with."""

from urllib.parse import urlsplit, urlunsplit

import psycopg
from flask_migrate import upgrade

import config
from backend import create_app, dispose_engines


def libpq_url(url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy's) as plain `postgresql://...` (libpq's)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate(url: str) -> None:
    """Drop the database of `url` if it exists, and create it empty (its role needs CREATEDB)."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(with_database(libpq_url(url), "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def migrate(settings: dict) -> None:
    """`flask db upgrade` on the settings' database."""
    app = create_app(settings)
    with app.app_context():
        upgrade()
    dispose_engines(app)


def bench_environ(url: str, instance_path: str) -> dict[str, str]:
    """The environment the benchmark's app (and its gunicorn) run with: production's."""
    return {
        "APP_ENV": "production",
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret-key-" + "x" * 32,
        "AUDIT_SIGNING_KEY": "bench-signing-key-" + "y" * 32,
        "INSTANCE_PATH": instance_path,
    }


def bench_settings(url: str, instance_path: str) -> dict:
    """The settings of `bench_environ`."""
    return config.settings(bench_environ(url, instance_path))
