"""The migrations build exactly the schema the models describe, on both databases."""

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade

from backend.extensions import db
from tests.conftest import ALICE, postgresql_only
from tests.helpers import assert_foreign_keys_enforced, latest_migration, schema_version


def test_the_migrated_schema_matches_the_models(app):
    # With the options `flask db migrate` uses (e.g. which objects exist on which database).
    options = {"include_object": app.extensions["migrate"].configure_args["include_object"]}
    with app.app_context(), db.engine.connect() as connection, warnings.catch_warnings():
        # The trigram index (PostgreSQL's only) has an expression, which alembic cannot read
        # back from SQLite, and says so before it asks include_object to leave the index out.
        warnings.filterwarnings(
            "ignore",
            "autogenerate skipping metadata-specified"
            " expression-based index 'ix_audit_log_track_trgm_block'"
            "; dialect 'sqlite'",
        )
        diff = compare_metadata(MigrationContext.configure(connection, opts=options), db.metadata)
    assert diff == []


def test_upgrade_at_the_latest_migration_succeeds(runner):
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output


def test_upgrade_at_the_latest_migration_changes_nothing(app, api, runner):
    api.create_user(*ALICE)
    before = schema_version(app)
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    assert schema_version(app) == before
    assert api.login(*ALICE)


@postgresql_only
def test_each_partition_of_the_audit_table_is_analyzed_every_100000_changes(api):
    """The planner must know how many rows the newest block of ids holds (backend/audit/
    query.py): autovacuum's default would analyze a table after a tenth of it changed. A
    partitioned table takes no autovacuum settings: each partition (the default one too)
    carries them (migration 0012)."""
    with api.app.app_context(), db.engine.connect() as connection:
        options = connection.exec_driver_sql(
            "SELECT relname, reloptions FROM pg_class"
            " JOIN pg_inherits ON pg_inherits.inhrelid = pg_class.oid"
            " WHERE pg_inherits.inhparent = 'audit_log'::regclass"
        ).all()
    assert "audit_log_default" in {name for name, _ in options}
    assert len(options) >= 5  # the default, this month and the three after it
    for _, partition_options in options:
        assert sorted(partition_options) == [
            "autovacuum_analyze_scale_factor=0",
            "autovacuum_analyze_threshold=100000",
        ]


def test_an_upgrade_from_the_first_release_keeps_users_signed_in(app, api, runner):
    # Migration 0011 rebuilds `users` on SQLite (a copy, DROP TABLE, RENAME), which enforced
    # foreign keys refused while `tokens` referred to it: any trail whose users had ever
    # logged in could not be upgraded. The first release's schema is migration 0007's.
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    with app.app_context():
        downgrade(revision="0007")
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert schema_version(app) == [latest_migration()]
    assert api.get("/v1/me", token).get_json()["username"] == ALICE[0]
    assert_foreign_keys_enforced(app)
