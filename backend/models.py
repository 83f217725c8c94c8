"""The three tables: users, their bearer tokens, and the audit trail."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm as so

from backend.clock import utcnow
from backend.db_types import BigIntegerKey, UTCDateTime
from backend.extensions import db

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SOURCES = ("auth", "v1", "main", "app")


class User(db.Model):
    """Someone who can log in; admins see the whole trail and manage users."""

    __tablename__ = "users"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(255))
    is_admin: so.Mapped[bool] = so.mapped_column(default=False)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)

    tokens: so.WriteOnlyMapped["Token"] = so.relationship(back_populates="user")

    def __repr__(self) -> str:
        return f"<User {self.username}>"


class Token(db.Model):
    """A bearer token, stored only as the SHA-256 digest of what the client holds."""

    __tablename__ = "tokens"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    digest: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime, default=utcnow)
    expires_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    revoked_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime)

    user: so.Mapped[User] = so.relationship(back_populates="tokens")


class Log(db.Model):
    """One audit event. Rows are written by `backend.audit.writer` only, and never changed.

    Every query of the trail orders by (created_at, id), so each filterable column leads an
    index that ends in that order: a filter plus a cursor is one index range scan.
    """

    __tablename__ = "audit_log"

    id: so.Mapped[int] = so.mapped_column(BigIntegerKey, primary_key=True)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime)
    source: so.Mapped[str] = so.mapped_column(sa.String(8))
    event: so.Mapped[str] = so.mapped_column(sa.String(64))
    level: so.Mapped[str] = so.mapped_column(sa.String(8))
    user: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    ip: so.Mapped[str | None] = so.mapped_column(sa.String(45))
    track: so.Mapped[str] = so.mapped_column(sa.Text)
    method: so.Mapped[str | None] = so.mapped_column(sa.String(16))
    path: so.Mapped[str | None] = so.mapped_column(sa.String(2048))
    status: so.Mapped[int | None] = so.mapped_column(sa.SmallInteger)
    request_id: so.Mapped[str | None] = so.mapped_column(sa.String(32))
    user_agent: so.Mapped[str | None] = so.mapped_column(sa.String(512))

    __table_args__ = (
        sa.Index("ix_audit_log_created_at_id", "created_at", "id"),
        *(
            sa.Index(f"ix_audit_log_{column}_created_at_id", column, "created_at", "id")
            for column in ("user", "ip", "level", "source", "event")
        ),
    )
