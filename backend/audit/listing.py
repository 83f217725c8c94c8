"""Listing the trail: filters, the visibility rule and keyset pagination (GET /v1/logs).

Rows are ordered by (created_at, id), the same order as every index on the table, and a page
continues from the last row of the previous one (`(created_at, id) < (c, i)`), never by OFFSET:
page 10,000 costs what page 1 costs, and rows written while a client pages shift nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import orm as so

from backend.audit.reads import reading_engine
from backend.models import ID_BLOCK_BITS, PURGE_CHECKPOINTS, AuditChain, Checkpoint, Log, User


class InvalidCursor(ValueError):
    """The cursor was not made by this service, or not for this order."""


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's sort key, and the direction it was read in."""

    order: str
    created_at: datetime
    id: int

    def encode(self) -> str:
        return _serializer().dumps([self.order, self.created_at.isoformat(), self.id])

    @classmethod
    def decode(cls, token: str, order: str) -> "Cursor":
        try:
            cursor_order, created_at, row_id = _serializer().loads(token)
            cursor = cls(cursor_order, datetime.fromisoformat(created_at), int(row_id))
        except (BadSignature, ValueError, TypeError):
            raise InvalidCursor("not a cursor from this service") from None
        if cursor.order != order or cursor.created_at.tzinfo is None:
            raise InvalidCursor(f"this cursor continues an order={cursor.order} listing")
        return cursor


def _serializer() -> URLSafeSerializer:
    # Signed, so a client cannot forge a position; not secret, it only holds a row's sort key.
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="audit-log-cursor")


def visible_to(viewer: User | None) -> sa.ColumnElement[bool]:
    """Admins see every row; anyone else only the rows about themselves. No viewer is the
    operator at the command line, who sees every row too."""
    return sa.true() if sees_every_row(viewer) else rows_about(viewer.username)


def sees_every_row(viewer: User | None) -> bool:
    return viewer is None or viewer.is_admin


def rows_about(username: str | sa.BindParameter) -> sa.ColumnElement[bool]:
    """The rows that a viewer who does not see every row sees: those about `username`."""
    return Log.user == username


def matching(filters: dict, viewer: User | None) -> sa.Select:
    """The rows that `filters` (the parsed query parameters) select and `viewer` may see."""
    query = sa.select(Log).where(visible_to(viewer))
    for name in ("user", "ip", "source", "event", "target", "target_type"):
        if filters.get(name) is not None:
            query = query.where(getattr(Log, name) == filters[name])
    for name in ("level", "outcome"):
        if filters.get(name):
            query = query.where(getattr(Log, name).in_(filters[name]))
    if filters.get("since") is not None:
        query = query.where(Log.created_at >= filters["since"])
    if filters.get("until") is not None:
        query = query.where(Log.created_at < filters["until"])
    if filters.get("q"):
        query = query.where(Log.track.ilike(f"%{_escape_like(filters['q'])}%", escape="\\"))
    if filters.get("own_reads") == "exclude" and viewer is not None:
        query = query.where(sa.not_(read_of_the_trail_by(viewer)))
    return query


def read_of_the_trail_by(viewer: User) -> sa.ColumnElement[bool]:
    """A successful read of the trail by `viewer` through the API (a listing, a row, counts,
    an export): what browsing the trail adds to it, which `own_reads=exclude` leaves out.
    Every api.request row has its method, path and status."""
    return sa.and_(
        Log.user == viewer.username,
        Log.event == "api.request",
        Log.method == "GET",
        Log.path.like("/v1/logs%"),
        Log.status < 400,
    )


def ordered(query: sa.Select, order: str, after: Cursor | None = None, entity=Log) -> sa.Select:
    """`query` in (created_at, id) order, continuing after `after` when given."""
    key = sa.tuple_(entity.created_at, entity.id)
    if after is not None:
        position = sa.tuple_(
            sa.literal(after.created_at, Log.created_at.type), sa.literal(after.id, Log.id.type)
        )
        query = query.where(key < position if order == "desc" else key > position)
    if order == "desc":
        return query.order_by(entity.created_at.desc(), entity.id.desc())
    return query.order_by(entity.created_at.asc(), entity.id.asc())


def first_rows(
    filters: dict,
    viewer: User,
    order: str,
    limit: int,
    after: Cursor | None = None,
    ids: sa.ColumnElement[bool] | None = None,
) -> sa.Select:
    """The first `limit` matching rows in order, after `after` (and meeting `ids`, a condition
    on their ids, when given).

    For several levels or outcomes, one ordered index range per value (per pair of values when
    both are lists), merged: PostgreSQL cannot read (level, created_at, id) in order for
    `level IN (...)`, and would otherwise scan the whole time index for rare levels, or fetch
    and sort every row of them.
    """

    def rows(arm_filters: dict) -> sa.Select:
        query = matching(arm_filters, viewer)
        return query if ids is None else query.where(ids)

    arms = [{}]
    for name in LIST_FILTERS:
        values = list(dict.fromkeys(filters.get(name) or ()))
        if len(values) > 1:
            arms = [{**arm, name: [value]} for arm in arms for value in values]
    if len(arms) < 2:
        return ordered(rows(filters), order, after).limit(limit)
    selects = [
        ordered(rows({**filters, **arm}), order, after).limit(limit).subquery() for arm in arms
    ]
    merged = so.aliased(Log, sa.union_all(*(sa.select(arm) for arm in selects)).subquery())
    return ordered(sa.select(merged), order, entity=merged).limit(limit)


# The filters that take several values, each value one ordered index range (first_rows).
LIST_FILTERS = ("level", "outcome")


# `q`, newest first, searches the newest block of 2**ID_BLOCK_BITS ids first, and the older
# rows only when that block holds less than a page. Ids follow (created_at, id) order along
# the chain (chain.link never lets time run backwards), so every row of a block sorts after
# every row of the blocks before it, and the two parts of a page join up in order. The
# trigram index keys each row's block too (migration 0006): a rare substring's search reads
# its newest block's matches only (figures: docs/benchmarks.md, "Tuning decisions").
def id_block(column) -> sa.ColumnElement[int]:
    """`column >> ID_BLOCK_BITS`, the expression the trigram index keys (literally: a bound
    parameter for the 20 would not match the index's expression)."""
    return column.op(">>", return_type=sa.BigInteger)(
        sa.literal_column(str(ID_BLOCK_BITS), sa.Integer)
    )


def in_block(block: int, starts_at: datetime | None = None) -> sa.ColumnElement[bool]:
    """The rows of `block`; `starts_at`, the time of its first row, bounds them in time too:
    on a trail partitioned by month the months before it are pruned from the plan (without
    it, each month's time index is read whole to find it holds no row of the block)."""
    inside = id_block(Log.id) == sa.literal(block, sa.BigInteger)
    return inside if starts_at is None else sa.and_(inside, Log.created_at >= starts_at)


def before_block(block: int, starts_at: datetime | None = None) -> sa.ColumnElement[bool]:
    # `id < block << ID_BLOCK_BITS`, as the index reads it: the older blocks' matches alone.
    older = id_block(Log.id) < sa.literal(block, sa.BigInteger)
    return older if starts_at is None else sa.and_(older, Log.created_at <= starts_at)


def block_start(connection: sa.Connection, block: int) -> datetime | None:
    """The time of the first row of `block` (time never runs backwards along the ids)."""
    return connection.scalar(
        sa.select(Log.created_at).where(Log.id >= block << ID_BLOCK_BITS).order_by(Log.id).limit(1)
    )


def search_block(connection: sa.Connection, after: Cursor | None) -> int:
    """The block a newest-first search starts in: the cursor's, or the newest row's."""
    if after is not None:
        return after.id >> ID_BLOCK_BITS
    newest = connection.scalar(sa.select(sa.func.max(Log.id)))
    return (newest or 0) >> ID_BLOCK_BITS


def page(
    filters: dict, viewer: User, *, order: str, limit: int, after: Cursor | None = None
) -> tuple[list[sa.Row], Cursor | None]:
    """One page of rows and the cursor of the next page (None on the last page).

    The rows are plain result rows, read in autocommit: a hundred ORM objects cost more than
    the rest of the request, and SELECTs need no transaction (a newest-first `q` reads the
    newest id, then its block, then perhaps the older rows). On the standby when there is one
    that holds the cursor's row (backend/audit/reads.py)."""
    engine = reading_engine(up_to_id=after.id if after is not None else None)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # In the first block there is nothing to split, and its key would only cost its reading
        # (figures: docs/benchmarks.md, "Tuning decisions").
        if filters.get("q") and order == "desc" and (block := search_block(connection, after)):
            starts_at = block_start(connection, block)
            rows = connection.execute(
                first_rows(filters, viewer, order, limit + 1, after, ids=in_block(block, starts_at))
            ).all()
            if len(rows) <= limit:
                rows += connection.execute(
                    first_rows(
                        filters,
                        viewer,
                        order,
                        limit + 1 - len(rows),
                        after,
                        ids=before_block(block, starts_at),
                    )
                ).all()
        else:
            rows = connection.execute(first_rows(filters, viewer, order, limit + 1, after)).all()
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor(order, rows[-1].created_at, rows[-1].id)


class ById(NamedTuple):
    """A query of the row with id `:log_id`, made once: for a viewer who sees every row, and
    for one who sees the rows about `:username` (`visible_to`). Made per request, a statement
    costs more than its answer (0.3 to 0.6 ms on a 2-core machine, against 0.5 ms)."""

    every: sa.Select
    own: sa.Select

    @classmethod
    def of(cls, *columns) -> "ById":
        query = sa.select(*columns).where(Log.id == sa.bindparam("log_id"))
        return cls(query, query.where(rows_about(sa.bindparam("username"))))

    def beside(self, query: sa.Select, name: str) -> "ById":
        """`query` with this row (its first column) beside it as the column `name`: one round
        trip for both."""
        return ById(*(query.add_columns(each.scalar_subquery().label(name)) for each in self))

    def asked_by(self, log_id: int, viewer: User) -> tuple[sa.Select, dict]:
        """The statement for `viewer`, and its parameters."""
        if sees_every_row(viewer):
            return self.every, {"log_id": log_id}
        return self.own, {"log_id": log_id, "username": viewer.username}


def _held(log_id: sa.BindParameter) -> sa.Select:
    """`:log_id` when the trail holds that row (no row when it does not), reading no row of
    it. Ids are gapless up to the chain's head, and a purge deletes the oldest ids, each batch
    or month after a signed checkpoint of its last row in the same transaction (retention.py):
    the rows left are those after the newest purge checkpoint, up to the head. Two index
    entries (migration 0015), where a lookup by id alone reads the index of every month's
    partition, as no month's bounds are known from the id.

    It trusts those two rows as the writer and the purge leave them, unsigned checks aside:
    a row deleted some other way keeps its proof (the tree keeps its leaf), and a forged
    purge checkpoint (the app's role may insert checkpoints) hides the rows before it from
    proofs until it is removed; `flask audit verify` names both."""
    newest = sa.func.coalesce(sa.func.max(Checkpoint.log_id), 0)
    purged = sa.select(newest).where(PURGE_CHECKPOINTS)  # by its partial index
    last = sa.select(AuditChain.last_id).where(AuditChain.id == 1)
    return sa.select(log_id).where(
        log_id > purged.scalar_subquery(), log_id <= last.scalar_subquery()
    )


ROW = ById.of(Log)
# Whether the row `:log_id` is there for the viewer, as its id (proofs: tree.py). For one who
# sees every row, asked of the chain's head and the purges alone: a proof reads no row.
ROW_ID = ById(_held(sa.bindparam("log_id", type_=sa.BigInteger)), ById.of(Log.id).own)


def visible_row(log_id: int, viewer: User) -> sa.Row | None:
    """The row with this id, if `viewer` may see it (from a standby only once it holds the
    row: a row just written is never a 404 for lag). A plain result row read in autocommit,
    as `page` reads them: an ORM session's transaction and object cost more than the query."""
    engine = reading_engine(up_to_id=log_id)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return connection.execute(*ROW.asked_by(log_id, viewer)).first()


def is_visible(connection: sa.Connection, log_id: int, viewer: User) -> bool:
    """Whether `viewer` may see the row with this id, reading no more of it than visibility
    needs (an admin's answer reads none of it: `ROW_ID`), on `connection` (one that holds the
    row: the caller chose where it reads)."""
    return connection.execute(*ROW_ID.asked_by(log_id, viewer)).first() is not None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
