"""A purge is never half done: killed (SIGKILL) or cut off by a database restart in the middle,
it leaves a trail that verifies, and running it again deletes the rest.

`flask audit purge` runs as a real process against a real PostgreSQL: the shared test database
for the kill, a private cluster (tests/pgcluster.py) for the restart. Batches of one row make
the purge long enough to be interrupted in its middle.
"""

import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from backend import create_app, dispose_engines
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.clock import moved, utcnow
from backend.models import Log
from tests.conftest import (
    database_environment,
    empty_postgresql,
    make_settings,
    migrate_to_head,
)
from tests.pgcluster import private_cluster
from tests.serving import BIN, flask

pytestmark = pytest.mark.faults

OLD_ROWS = 3000
# The old rows and the purge's date fall in one month, over a year ago: on a trail partitioned
# by month (migration 0012) that month is the purge's boundary, deleted row by row, which is
# what can be cut off in its middle (a whole month before the date is dropped at once: see
# tests/test_purge_partitions.py). Which months have a partition of their own depends on the
# tests run before; the boundary month is deleted by rows either way.
OLD_AT = (utcnow() - timedelta(days=400)).replace(day=2, hour=12, minute=0, second=0)
PURGE_BEFORE = (OLD_AT + timedelta(days=2)).date().isoformat()
DEADLINE = 60.0  # seconds for anything to happen; a bound, never a wait


def environment(database_url: str, instance_path) -> dict:
    """The `flask` command's environment: the settings of the tests' app (same signing key)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "APP_ENV": "testing",
        **database_environment(database_url),
        "SECRET_KEY": "test-secret-key",
        "INSTANCE_PATH": str(instance_path),
    }


def old_trail(app, count: int) -> None:
    """`count` rows of OLD_AT, then one row now, through the writer (one transaction)."""
    with app.app_context(), moved(OLD_AT - utcnow()):
        writer().write_batch(
            [
                AuditEvent(source="app", event="test.old", level="INFO", track=f"old {n}")
                for n in range(count)
            ]
        )
    with app.app_context():
        writer().write_batch(
            [AuditEvent(source="app", event="test.new", level="INFO", track="new")]
        )


def start_purge(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "flask", "audit", "purge", "--before", PURGE_BEFORE, "--yes", "--batch", "1"],
        cwd=config.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_id(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.min(Log.id)))


def wait_until_purging(engine: sa.Engine, process: subprocess.Popen) -> int:
    """Wait until the purge has deleted some rows; the first id left then."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        first = first_id(engine)
        if first > 20:
            return first
        time.sleep(0.005)
    raise AssertionError("the purge deleted nothing in time")


def assert_verifies(env: dict) -> str:
    verified = flask(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("intact: "), verified.stdout
    return verified.stdout


def assert_purge_finishes(env: dict, engine: sa.Engine) -> None:
    """Running the same purge again deletes every old row left, and the trail verifies."""
    again = flask(
        env,
        "audit",
        "purge",
        "--before",
        PURGE_BEFORE,
        "--yes",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    with engine.connect() as connection:
        events = connection.scalars(sa.select(Log.event).order_by(Log.id)).all()
    assert "test.old" not in events
    assert events.count("test.new") == 1
    assert_verifies(env)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_purge_killed_in_the_middle_leaves_a_verifiable_trail_and_finishes_when_rerun(
    app, database_url, tmp_path
):
    old_trail(app, OLD_ROWS)
    env = environment(database_url, tmp_path)
    engine = sa.create_engine(database_url)
    try:
        process = start_purge(env)
        wait_until_purging(engine, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=DEADLINE)
        assert process.returncode == -signal.SIGKILL
        left = first_id(engine)
        assert 20 < left <= OLD_ROWS, "the purge was not interrupted in its middle"
        assert f"after the signed purge of rows 1-{left - 1}" in assert_verifies(env)
        assert_purge_finishes(env, engine)
    finally:
        engine.dispose()


def test_a_purge_cut_off_by_a_database_restart_leaves_a_verifiable_trail_and_finishes_when_rerun(
    tmp_path,
):
    with private_cluster() as cluster:
        url = config.database_url_for_sqlalchemy(
            cluster.create_database("audit", "audit", "audit-purge-password")
        )
        migrate_to_head(url, tmp_path)
        empty_postgresql(url)
        app = create_app(make_settings(url, tmp_path))
        old_trail(app, OLD_ROWS)
        dispose_engines(app)
        env = environment(url, tmp_path)
        engine = sa.create_engine(url)
        try:
            process = start_purge(env)
            wait_until_purging(engine, process)
            engine.dispose()
            cluster.restart()
            _, stderr = process.communicate(timeout=DEADLINE)
            assert process.returncode == 1, stderr
            assert "purge stopped after" in stderr
            left = first_id(engine)
            assert 20 < left <= OLD_ROWS, "the purge was not interrupted in its middle"
            assert_verifies(env)
            assert_purge_finishes(env, engine)
        finally:
            engine.dispose()
