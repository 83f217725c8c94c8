"""/v1/logs: query the audit trail, page by page, one row, counts per hour or day, or all of it
as a file."""

from datetime import datetime

from apifairy import arguments, authenticate, other_responses, response
from flask import Response, request
from marshmallow import RAISE
from werkzeug.exceptions import NotFound

from backend.audit import export, listing
from backend.audit.stats import InvalidRange, counts_per_bucket, window
from backend.clock import rfc3339, utcnow
from backend.errors import BAD_PARAMETER, UNAUTHORIZED, ValidationFailed
from backend.extensions import db, token_auth
from backend.schemas import (
    ErrorSchema,
    LogExportSchema,
    LogPageSchema,
    LogQuerySchema,
    LogSchema,
    LogStatsQuerySchema,
    LogStatsSchema,
    logs_as_json,
)
from backend.signals import Target
from backend.urls import external_url
from backend.v1 import bp, export_guard, note


def note_read(args: dict) -> dict:
    """Put this read of the trail on its own record: its `filters` (the parsed query, times
    in RFC 3339, without a page's cursor), on the target `trail`. Returns the filters."""
    filters = {
        name: rfc3339(value) if isinstance(value, datetime) else value
        for name, value in args.items()
        if name != "after"
    }
    note(target=Target("trail"), filters=filters)
    return filters


# Ids are 64-bit; a larger one names no row (and must not reach the database as a number).
MAX_ID = 2**63 - 1


@bp.get("/logs")
@authenticate(token_auth)
@arguments(LogQuerySchema, unknown=RAISE)
@other_responses(
    {
        200: (LogPageSchema, "A page of rows, and the cursor of the next page"),
        **UNAUTHORIZED,
        **BAD_PARAMETER,
    }
)
def logs(args: dict):
    """Query the audit trail, newest first

    Admins see every row, other users the rows whose `user` is themselves. Pages follow the
    `next` cursor (also sent as a `Link: <...>; rel="next"` header).
    """
    note_read(args)
    after = None
    if "after" in args:
        try:
            after = listing.Cursor.decode(args["after"], args["order"])
        except listing.InvalidCursor as error:
            raise ValidationFailed({"after": [str(error)]}) from None
    rows, next_cursor = listing.page(
        args, token_auth.current_user(), order=args["order"], limit=args["limit"], after=after
    )
    headers = {}
    if next_cursor is not None:
        next_cursor = next_cursor.encode()
        params = request.args.to_dict(flat=False) | {"after": next_cursor}
        headers["Link"] = f'<{external_url("v1.logs", **params)}>; rel="next"'
    # Not through @response: marshmallow's per-field cost would be a third of the request.
    return {"items": logs_as_json(rows), "next": next_cursor}, 200, headers


@bp.get("/logs/<int:log_id>")
@authenticate(token_auth)
@response(LogSchema)
@other_responses({**UNAUTHORIZED, 404: (ErrorSchema, "No such row, or not yours to see")})
def log(log_id: int):
    """One row of the audit trail"""
    note(target=Target("trail", log_id), filters={"id": log_id})
    row = listing.visible_row(log_id, token_auth.current_user()) if log_id <= MAX_ID else None
    if row is None:
        raise NotFound("No audit row with that id is visible to you.")
    return row


@bp.get("/logs/stats")
@authenticate(token_auth)
@arguments(LogStatsQuerySchema, unknown=RAISE)
@response(LogStatsSchema)
@other_responses({**UNAUTHORIZED, **BAD_PARAMETER})
def stats(args: dict):
    """Count the audit trail's rows per hour or day, and per level

    The filters and visibility rule of `GET /v1/logs`, counted in UTC buckets of `bucket`
    (`hour` or `day`) over `[since, until)`. `until` defaults to now; `since` to the start of
    the last 48 hours (or 90 days), whole buckets. Every bucket of the range is answered,
    oldest first, empty ones too; a range of more than 1000 buckets is a 400 naming `since`.
    """
    note_read(args)
    bucket = args.pop("bucket")
    try:
        since, until = window(bucket, args.pop("since", None), args.pop("until", None), utcnow())
    except InvalidRange as error:
        raise ValidationFailed({error.field: [str(error)]}) from None
    counts = counts_per_bucket(args, token_auth.current_user(), bucket, since, until)
    buckets = [
        {"start": start, "total": sum(levels.values()), "counts": levels}
        for start, levels in counts
    ]
    return {
        "bucket": bucket,
        "since": since,
        "until": until,
        "total": sum(item["total"] for item in buckets),
        "buckets": buckets,
    }


@bp.get("/logs/export")
@authenticate(token_auth)
@arguments(LogExportSchema, unknown=RAISE)
@other_responses(
    {
        200: "Every matching row, oldest first, streamed",
        **UNAUTHORIZED,
        **BAD_PARAMETER,
        429: (ErrorSchema, "Too many exports running; see `Retry-After`"),
    }
)
def export_logs(args: dict):
    """Export the audit trail as NDJSON or CSV

    Every row that the filters of `GET /v1/logs` select and the caller may see, oldest first
    (the chain's order), with `event_id`, `prev_hash` and `hash` for offline verification.
    Streamed: any number of rows in constant memory. A user may run EXPORTS_PER_USER exports
    at once (429 with `Retry-After` past that, or past the service's own bound), and a client
    that reads nothing for EXPORT_STALL_TIMEOUT seconds is cut off. In CSV a text cell that a
    spreadsheet would run as a formula gets a `'` in front: one that starts with a tab, CR or
    LF, or whose first character that is not whitespace or invisible is `=`, `+`, `-` or `@`
    after NFKC normalisation (full-width `＝` too).
    """
    fmt = args.pop("format")
    user = token_auth.current_user()
    statement = export.statement(args, user, db.engine.dialect.name, fmt)
    chunks = export_guard.guarded(
        user,
        lambda progress: export.started(export.stream(db.engine, statement, fmt, progress)),
        {"filters": note_read(args), "format": fmt},
    )
    return Response(
        chunks,
        content_type=export.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="audit-log.{fmt}"'},
    )
