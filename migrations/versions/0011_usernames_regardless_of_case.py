"""User names unique regardless of case: users.folded_username (NFKC, case-folded) and its
unique index.

Existing names that fold to the same name ('Alice' and 'alice') would make the index fail
with the database's own words; the migration looks first, and if any clash it stops before
changing anything, naming them and what to do.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import unicodedata
from collections import defaultdict

import click
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def fold(username: str) -> str:
    """backend.models.fold_username, as it was when this migration was written."""
    return unicodedata.normalize("NFKC", username).casefold()


def clashes(users: list) -> list[list]:
    """The groups of users whose names fold to one name, each in id order."""
    groups = defaultdict(list)
    for user in users:
        groups[fold(user.username)].append(user)
    return [group for group in groups.values() if len(group) > 1]


def describe(groups: list[list]) -> str:
    names = "; ".join(
        " and ".join(f"{user.username!r} (id {user.id})" for user in group) for group in groups
    )
    return (
        "user names must be unique regardless of case, and these are one name: "
        f"{names}. Nothing was changed. Rename all but one of each (as the database's owner, "
        "e.g. UPDATE users SET username = 'alice-2' WHERE id = ...), then run "
        "`flask db upgrade` again."
    )


def upgrade():
    users = op.get_bind().execute(sa.text("SELECT id, username FROM users ORDER BY id")).all()
    if found := clashes(users):
        raise click.ClickException(describe(found))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("folded_username", sa.String(length=255), nullable=True))
    table = sa.table("users", sa.column("id"), sa.column("folded_username"))
    for user in users:
        op.execute(
            table.update().where(table.c.id == user.id).values(folded_username=fold(user.username))
        )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("folded_username", existing_type=sa.String(length=255), nullable=False)
        batch.create_unique_constraint("uq_users_folded_username", ["folded_username"])


def downgrade():
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_folded_username", type_="unique")
        batch.drop_column("folded_username")
