"""The service served for real: `make run`'s command, then the README's curl session.

The Makefile's `run` command (the boot: `flask db upgrade`, `flask users ensure-admin`, then
gunicorn with backend/gunicorn_conf.py) runs as a subprocess of the venv, against each
database of the `database_url` fixture; the session talks to it over a loopback socket with
urllib, and then reads its own steps back from /v1/logs and from the access log.
"""

import os
import subprocess
from pathlib import Path

import pytest

import config
from tests.serving import (
    BIN,
    READY_DEADLINE,
    Client,
    free_port,
    make_run_command,
    readme_session,
    start,
    stop,
    wait_until_ready,
)

pytestmark = pytest.mark.serving

ADMIN = ("admin", "serving-admin-password-1")


def server_environment(database_url: str, instance_path: Path) -> dict:
    """What `make run` would see, with every setting the session depends on pinned."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "development",
        "INSTANCE_PATH": str(instance_path),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "serving-test-secret-key",
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        # Pinned so that a developer's .env (read too, but never overriding) cannot change them.
        "TOKEN_TTL": "3600",
        "TRUSTED_PROXY_HOPS": "0",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "2",
    }


@pytest.fixture
def served(database_url, tmp_path):
    """`make run`'s command on a migrated database; yields (client, server output)."""
    port = free_port()
    log = tmp_path / "server.log"
    server = start(make_run_command(port), server_environment(database_url, tmp_path), log)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        wait_until_ready(client, server, log)
        yield client, log
    finally:
        stop(server)


def test_make_run_serves_with_the_gunicorn_config_and_creates_the_admin(served):
    _, log = served
    output = log.read_text()
    assert f"created admin {ADMIN[0]}\n" in output
    assert "serving with 2 workers x 2 threads" in output  # backend/gunicorn_conf.py's line


def test_the_readme_session_works_and_leaves_its_trail(served):
    client, log = served
    readme_session(client, log, ADMIN)


def test_production_without_its_secrets_stops_gunicorn_with_a_clear_message(tmp_path):
    env = {"PATH": os.environ.get("PATH", os.defpath), "APP_ENV": "production",
           "INSTANCE_PATH": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [BIN / "gunicorn", "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "wsgi:app"],
        cwd=config.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = server.communicate(timeout=READY_DEADLINE)
    finally:
        stop(server)
    assert server.returncode != 0
    assert "configuration error: APP_ENV=production needs DATABASE_URL" in output
