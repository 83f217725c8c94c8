"""The tables: users, their bearer tokens, login throttles, and the audit trail with its chain
head, checkpoints, legal holds and the relay's sink cursors."""

import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm as so

from backend.clock import utcnow
from backend.db_types import BigIntegerKey, JSONObject, UTCDateTime
from backend.extensions import db

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# `cli`: a `flask` command; `system`: the service itself (start, stop, spooling, replay).
SOURCES = ("auth", "v1", "main", "app", "cli", "system")
# What came of an act (CONTRACT.md, "The structured record"): `failure` is tried and did not
# succeed (wrong credentials, invalid input); `denied` is refused by a control (no or a bad
# token, 403, a lockout); `error` is the service's fault (5xx).
OUTCOMES = ("success", "failure", "denied", "error")
# The version of the chain that new rows are hashed under (audit/chain.py): 2 covers the
# structured record's fields too.
CHAIN_VERSION = 2


def fold_username(username: str) -> str:
    """The form in which two user names are the same name: Unicode NFKC, then case-folded
    (`Alice`, `ALICE` and `alice` are one name)."""
    return unicodedata.normalize("NFKC", username).casefold()


def _folded_username(context) -> str:
    return fold_username(context.get_current_parameters()["username"])


class User(db.Model):
    """Someone who can log in; admins see the whole trail and manage users."""

    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    # fold_username(username), set on every insert; its unique index makes names unique
    # regardless of case (migration 0011).
    folded_username: so.Mapped[str] = so.mapped_column(
        sa.String(255), unique=True, default=_folded_username
    )
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(255))
    is_admin: so.Mapped[bool] = so.mapped_column(default=False)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    # Set by an admin: a disabled user cannot log in, and tokens stop working at once.
    disabled_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    # Tokens from logins that began before this are dead, even one that raced the change.
    password_changed_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)

    tokens: so.WriteOnlyMapped["Token"] = so.relationship(back_populates="user")

    @property
    def disabled(self) -> bool:
        """Disabled by an admin: no login, no live token."""
        return self.disabled_at is not None

    def __repr__(self) -> str:
        return f"<User {self.username}>"


class Token(db.Model):
    """A bearer token, stored only as the SHA-256 digest of what the client holds."""

    __tablename__ = "tokens"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    digest: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    # When it was issued; a token issued before the user's password_changed_at is dead (besides
    # revoked by the change: backend/accounts.py orders the two against logins).
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    expires_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    revoked_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)

    user: so.Mapped[User] = so.relationship(back_populates="tokens")


class LoginThrottle(db.Model):
    """Failed-login counters of one key: an (account, address) pair, an address or an account.

    `key` is the SHA-256 of the scope and its parts (`backend.auth.lockout`), so any attempted
    name fits, control characters and all. Updates are optimistic (`version`): two workers
    counting the same failure at once cannot lose one of them.
    """

    __tablename__ = "login_throttles"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    scope: so.Mapped[str] = so.mapped_column(sa.String(8))
    key: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    failures: so.Mapped[int] = so.mapped_column(default=0)
    lockouts: so.Mapped[int] = so.mapped_column(default=0)
    last_failure_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    locked_until: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    last_success_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    # When the row stops mattering; expired rows are deleted as new failures come in.
    expires_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, index=True)
    version: so.Mapped[int] = so.mapped_column()

    __mapper_args__ = {"version_id_col": version}


# The trigram index keys each row's block of 2**ID_BLOCK_BITS ids (audit/listing.py searches the
# newest block first). Migration 0006 writes the same number into the index.
ID_BLOCK_BITS = 20


@dataclass(frozen=True)
class AuditField:
    """One field of an audit row. Its column, its place in the row's hash, the export and the
    API all come from AUDIT_FIELDS: adding a field is one entry here, plus its migration."""

    name: str
    type: sa.types.TypeEngine
    nullable: bool = False
    # Given by chain.link (the id, and the hashes that link the row), not by the AuditEvent.
    by_chain: bool = False
    # An AuditEvent's default for the field (a nullable field's is None).
    default_factory: Callable[[], object] | None = None
    # Covered by the row's hash, in AUDIT_FIELDS order, from chain version `since` on (a version's
    # fields never change: a field added later is hashed from the next version).
    hashed: bool = True
    since: int = 1
    # In LogSchema, with these options of its marshmallow field (the row of CONTRACT.md);
    # None: in the export only, after the API's fields (what offline verification needs).
    api: dict | None = None
    # Further options of the column (primary key, unique).
    column: dict = field(default_factory=dict)

    def as_column(self) -> sa.Column:
        """The field's column of `audit_log`."""
        return sa.Column(self.name, self.type, nullable=self.nullable, **self.column)


AUDIT_FIELDS = (
    AuditField(
        "id",
        BigIntegerKey,
        by_chain=True,
        api={"required": True},
        column={"primary_key": True, "autoincrement": False},
    ),
    AuditField("created_at", UTCDateTime(), default_factory=utcnow, api={"required": True}),
    # Names the event across retries: a replay from the spool never writes it twice. Unique
    # (with created_at on PostgreSQL: Log's unique keys).
    AuditField("event_id", sa.Uuid(), default_factory=uuid.uuid4),
    AuditField("source", sa.String(8), api={"required": True, "metadata": {"enum": list(SOURCES)}}),
    AuditField(
        "event", sa.String(64), api={"required": True, "metadata": {"example": "login.failure"}}
    ),
    AuditField("level", sa.String(8), api={"required": True, "metadata": {"enum": list(LEVELS)}}),
    AuditField("user", sa.String(64), nullable=True, api={"required": True}),
    AuditField("ip", sa.String(45), nullable=True, api={"required": True}),
    AuditField("track", sa.Text(), api={"required": True}),
    AuditField("method", sa.String(16), nullable=True, api={}),
    AuditField("path", sa.String(2048), nullable=True, api={}),
    AuditField("status", sa.SmallInteger(), nullable=True, api={}),
    AuditField("request_id", sa.String(32), nullable=True, api={}),
    AuditField("user_agent", sa.String(512), nullable=True, api={}),
    # The structured record (chain version 2, migration 0008): who acted, on what, with what
    # result, and the facts (`details`: changes, reason, filters...). Null on older rows.
    AuditField("actor_id", sa.BigInteger(), nullable=True, since=2, api={}),
    AuditField("token_id", sa.BigInteger(), nullable=True, since=2, api={}),
    AuditField("target_type", sa.String(32), nullable=True, since=2, api={}),
    AuditField("target_id", sa.String(64), nullable=True, since=2, api={}),
    AuditField("target", sa.String(255), nullable=True, since=2, api={}),
    AuditField(
        "outcome",
        sa.String(8),
        nullable=True,  # for the rows of chain version 1; every new row has one
        since=2,
        api={"metadata": {"enum": list(OUTCOMES)}},
    ),
    AuditField("details", JSONObject(), default_factory=dict, since=2, api={}),
    # The chain version the row's hash was computed under (1: before migration 0008).
    AuditField("chain_version", sa.SmallInteger(), by_chain=True, since=2, api=None),
    AuditField("prev_hash", sa.String(64), by_chain=True, hashed=False),
    AuditField("hash", sa.String(64), by_chain=True, hashed=False),
)


class Log(db.Model):
    """One audit event. Rows are written by `backend.audit.writer` only, and never changed
    (triggers refuse UPDATE, DELETE and TRUNCATE; retention deletes under a purge permit).

    Ids are given out by the writer under the chain's lock: gapless, in commit order, and
    `created_at` never decreases along them. Every query of the trail orders by
    (created_at, id), so each filterable column leads an index that ends in that order: a
    filter plus a cursor is one index range scan. The columns are AUDIT_FIELDS.

    On PostgreSQL the table is partitioned by month on `created_at` (migration 0012,
    backend/audit/partitions.py), and a partitioned table's unique keys must include that
    column: its primary key is (id, created_at) and `event_id` is unique with `created_at`.
    Ids are unique all the same (the writer gives each out once, under the chain's lock), so
    the mapping keeps `id` alone as the row's identity, which is SQLite's INTEGER PRIMARY KEY.
    """

    __table__ = sa.Table(
        "audit_log",
        db.metadata,
        *(spec.as_column() for spec in AUDIT_FIELDS),
        # What keeps a replayed event single is the writer's look-up of its event id under the
        # chain's lock (chain.existing_event_ids), which sees every partition; the key refuses a
        # second copy carrying the same created_at (a replay keeps its event's) as well.
        sa.UniqueConstraint("event_id", name="uq_audit_log_event_id").ddl_if(dialect="sqlite"),
        sa.UniqueConstraint("event_id", "created_at", name="uq_audit_log_event_id").ddl_if(
            dialect="postgresql"
        ),
        sa.Index("ix_audit_log_created_at_id", "created_at", "id"),
        *(
            sa.Index(f"ix_audit_log_{column}_created_at_id", column, "created_at", "id")
            for column in ("user", "ip", "level", "source", "event", "outcome")
        ),
        # What was acted on (migration 0008): by name within a type, or by type alone.
        sa.Index("ix_audit_log_target_created_at_id", "target", "created_at", "id"),
        sa.Index("ix_audit_log_target_type_created_at_id", "target_type", "created_at", "id"),
        # A user's rows of given levels: one ordered range per level (migration 0005).
        sa.Index("ix_audit_log_user_level_created_at_id", "user", "level", "created_at", "id"),
        # `q` (ILIKE '%...%') on PostgreSQL, with each row's block of ids (audit/listing.py,
        # migration 0006); SQLite scans. Its pending list is kept short by the audit writer's
        # sessions (audit/writer.py).
        sa.Index(
            "ix_audit_log_track_trgm_block",
            "track",
            sa.text(f"(id >> {ID_BLOCK_BITS})"),
            postgresql_using="gin",
            postgresql_ops={"track": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql"),
    )


class AuditChain(db.Model):
    """The chain's head: one row (id 1), locked by every append, so appends queue up."""

    __tablename__ = "audit_chain"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    last_id: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    last_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    last_created_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    since_checkpoint: so.Mapped[int] = so.mapped_column()
    # The Merkle tree's frontier (backend/audit/merkle.py, `pack`): its size is last_id.
    tree_frontier: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    # When the last tree head was signed: one is due every few seconds while rows come.
    tree_head_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)


# The purge checkpoints, literally (not a bound parameter): the predicate of their partial
# index, which a query, even a prepared statement's generic plan, may use only when its own
# WHERE implies it (listing.ROW_ID; migration 0015).
PURGE_CHECKPOINTS = sa.text("reason = 'purge'")


class Checkpoint(db.Model):
    """A signed chain position: `mac` = HMAC-SHA-256(AUDIT_SIGNING_KEY, "log_id:log_hash:reason").

    Written every CHECKPOINT_EVERY rows, on demand (`flask audit anchor`), and by a purge, where
    it vouches for the first remaining row's `prev_hash`. Append-only like the trail.
    """

    __tablename__ = "audit_checkpoint"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    log_id: so.Mapped[int] = so.mapped_column(sa.BigInteger, index=True)
    log_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    reason: so.Mapped[str] = so.mapped_column(sa.String(16))
    mac: so.Mapped[str] = so.mapped_column(sa.String(64))

    __table_args__ = (
        # The newest purge's row, one index entry away.
        sa.Index(
            "ix_audit_checkpoint_purge",
            "log_id",
            postgresql_where=PURGE_CHECKPOINTS,
            sqlite_where=PURGE_CHECKPOINTS,
        ),
    )


class TreeNode(db.Model):
    """A perfect subtree of the Merkle tree over the trail, stored once complete (merkle.py):
    proofs read these, never the rows. Append-only; a purge keeps them."""

    __tablename__ = "audit_tree_node"

    position: so.Mapped[int] = so.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    hash: so.Mapped[str] = so.mapped_column(sa.String(64))


class TreeTile(db.Model):
    """A tile of the Merkle tree (merkle.py): the 62 stored subtrees of `tile_members(position)`,
    their hashes' 32 bytes one after another, copied from `audit_tree_node` once complete, so
    that a proof reads a row where it would read several. Append-only; a purge keeps them."""

    __tablename__ = "audit_tree_tile"

    position: so.Mapped[int] = so.mapped_column(
        sa.BigInteger, primary_key=True, autoincrement=False
    )
    hashes: so.Mapped[bytes] = so.mapped_column(sa.LargeBinary)


class TreeHead(db.Model):
    """A signed tree head: a C2SP checkpoint of the tree at `tree_size`, signed with the Ed25519
    key `key_id` (whose private half never enters the database). Append-only."""

    __tablename__ = "audit_tree_head"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    tree_size: so.Mapped[int] = so.mapped_column(sa.BigInteger, index=True)
    root_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    key_id: so.Mapped[str] = so.mapped_column(sa.String(8))
    checkpoint: so.Mapped[str] = so.mapped_column(sa.Text)


class SigningKey(db.Model):
    """The public half of a tree-head signing key, listed by /v1/logs/keys; a key is retired
    when another one starts signing (its heads still verify)."""

    __tablename__ = "audit_signing_key"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    key_id: so.Mapped[str] = so.mapped_column(sa.String(8), unique=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(255))
    public_key: so.Mapped[str] = so.mapped_column(sa.String(64))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    retired_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)


class PurgePermit(db.Model):
    """While a row exists here (inside the purge's own transaction), triggers allow DELETE."""

    __tablename__ = "audit_purge_permit"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)


class Hold(db.Model):
    """A legal hold: while one stands (placed, not released), nothing of the trail is deleted.

    `flask audit purge` refuses to run, and the append-only triggers refuse every DELETE of
    `audit_log` (migration 0007). A released hold stays here, with who released it and when.
    """

    __tablename__ = "audit_hold"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(64))
    reason: so.Mapped[str] = so.mapped_column(sa.Text)
    placed_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    placed_by: so.Mapped[str] = so.mapped_column(sa.String(255))
    released_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)
    released_by: so.Mapped[str | None] = so.mapped_column(sa.String(255))

    __table_args__ = (
        # One standing hold of a name at a time; a name can be placed again once released.
        sa.Index(
            "uq_audit_hold_standing_name",
            "name",
            unique=True,
            postgresql_where=sa.text("released_at IS NULL"),
            sqlite_where=sa.text("released_at IS NULL"),
        ),
    )


class SinkCursor(db.Model):
    """Where the relay stands for one sink of AUDIT_SINKS_FILE (migration 0010).

    `delivered_id` moves only after the sink took every row up to it, so it never passes an
    undelivered row. `state`, `last_error`, `failures` and `seen_at` are what the relay last
    said, for `GET /v1/sinks`, `/readyz` and `/metrics`.
    """

    __tablename__ = "audit_sink_cursor"

    name: so.Mapped[str] = so.mapped_column(sa.String(64), primary_key=True)
    delivered_id: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    state: so.Mapped[str] = so.mapped_column(sa.String(16))
    last_error: so.Mapped[str | None] = so.mapped_column(sa.Text)
    failures: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    seen_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
