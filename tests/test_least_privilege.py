"""Least privilege (the outside attacker's report, item 1): the app's own database role may add
to the trail and read it, and nothing more; migrations and `flask audit purge` work as the
tables' owner, DATABASE_ADMIN_URL.

PostgreSQL only (SQLite has no roles), with the app on TEST_DATABASE_APP_URL's role, as CI runs
the whole suite: without it these fail under CI and are skipped elsewhere, like every
PostgreSQL test.
"""

import os

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from backend.extensions import db
from backend.roles import owner_engine
from tests.conftest import TEST_DATABASE_APP_URL, postgresql_only
from tests.helpers import PERMIT, aged_trail, flask_audit, make_trail, purge, table_rows

pytestmark = [postgresql_only, pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="1")]

TRAIL = ("audit_log", "audit_checkpoint")
FORBIDDEN = {
    "UPDATE": "UPDATE {} SET id = id WHERE id = 1",
    "DELETE": "DELETE FROM {} WHERE id = 1",
    "TRUNCATE": "TRUNCATE {}",
}


@pytest.fixture(autouse=True)
def restricted_app_role(database_url):
    """The app runs as a role of its own, not the tables' owner."""
    if not TEST_DATABASE_APP_URL:
        reason = "TEST_DATABASE_APP_URL is not set: the app runs as the tables' owner"
        if os.environ.get("CI"):
            pytest.fail(f"CI must set TEST_DATABASE_APP_URL: {reason}")
        pytest.skip(reason)


@pytest.fixture
def trail(client) -> None:
    """Three rows written by the app as its own role, each with its checkpoint."""
    make_trail(client, 3)


def as_the_app(app, *statements: str) -> None:
    """Raw SQL in one transaction of the app's own role (DATABASE_URL)."""
    with app.app_context(), db.engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))


def current_user(engine: sa.Engine) -> str:
    """The role the engine's connections act as."""
    with engine.connect() as connection:
        return connection.scalar(sa.text("SELECT current_user"))


def assert_permission_denied(app, *statements: str) -> None:
    """The database refuses the statements for the role's privileges (not a trigger), and the
    trail's tables are as they were."""
    before = {table: table_rows(app, table) for table in TRAIL}
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        as_the_app(app, *statements)
    assert {table: table_rows(app, table) for table in TRAIL} == before


def test_the_app_serves_as_a_role_that_does_not_own_the_trail(app, trail):
    with app.app_context():
        assert current_user(db.engine) != current_user(owner_engine())
        assert [row.id for row in table_rows(app, "audit_log")] == [1, 2, 3]


@pytest.mark.parametrize("table", TRAIL)
@pytest.mark.parametrize("operation", FORBIDDEN)
def test_the_apps_role_may_not_change_the_trail(app, trail, table, operation):
    assert_permission_denied(app, FORBIDDEN[operation].format(table))


def test_the_apps_role_may_not_insert_a_purge_permit(app, trail):
    assert_permission_denied(app, PERMIT)


def test_the_apps_role_may_not_delete_under_a_purge_permit(app, trail):
    """The attacker's exact sequence."""
    assert_permission_denied(app, PERMIT, "DELETE FROM audit_log WHERE id = 1")


@pytest.mark.parametrize("table", TRAIL)
def test_the_apps_role_may_not_lift_the_append_only_triggers(app, trail, table):
    with pytest.raises(sa.exc.ProgrammingError, match="must be owner"):
        as_the_app(app, f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")


def test_an_upgrade_takes_back_a_privilege_granted_by_hand(app, trail):
    with app.app_context(), owner_engine().begin() as connection:
        role = current_user(db.engine)
        connection.execute(sa.text(f'GRANT DELETE ON audit_log TO "{role}"'))
    with app.app_context():
        upgrade()
    assert_permission_denied(app, "DELETE FROM audit_log WHERE id = 1")


def test_the_apps_role_appends_where_functions_are_not_everyones(app, client):
    """Where the owner took EXECUTE on functions from PUBLIC, each upgrade grants the app's
    role the writer's own (audit_append), or every event would go to the spool."""
    with app.app_context(), owner_engine().begin() as connection:
        connection.execute(
            sa.text(
                "REVOKE EXECUTE ON FUNCTION audit_append(json, json, json, json, json) FROM PUBLIC"
            )
        )
    with app.app_context():
        upgrade()
    make_trail(client, 2)
    assert [row.id for row in table_rows(app, "audit_log")] == [1, 2]


def test_purge_deletes_as_the_owner_what_the_apps_role_may_not(app, client, runner):
    aged_trail(client, old=2, new=1)
    assert_permission_denied(app, PERMIT, "DELETE FROM audit_log WHERE id = 1")
    result = purge(runner, "--yes")
    assert result.exit_code == 0, result.output
    assert [row.id for row in table_rows(app, "audit_log")] == [3, 4]


def test_the_trail_purged_as_the_owner_verifies_as_the_app(client, runner):
    aged_trail(client, old=2, new=1)
    purge(runner, "--yes")
    result = flask_audit(runner, "verify")
    assert result.exit_code == 0, result.output
