"""Marshmallow schemas: what the API reads and writes, and what its OpenAPI document says."""

import ipaddress
import operator
import re
from datetime import UTC

from flask import request
from marshmallow import ValidationError, fields, validate, validates, validates_schema
from webargs.fields import DelimitedList

from backend.clock import rfc3339
from backend.db_types import UTCDateTime as DBDateTime
from backend.extensions import ma
from backend.models import AUDIT_FIELDS, LEVELS, OUTCOMES, SOURCES, AuditField

USERNAME_RULE = "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"
# Python's end is \Z, not $: `$` also matches before a final newline, which would let
# "alice\n" through.
USERNAME = validate.Regexp(
    USERNAME_RULE + r"\Z",
    error="1 to 64 characters: letters, digits and _ . @ - (starting with a letter or digit)",
)
# The same rule as the OpenAPI document must write it: JSON Schema patterns are ECMA 262
# regular expressions, which have no \Z and whose `$` matches at the very end only.
USERNAME_PATTERN = {"pattern": USERNAME_RULE + "$"}


def unicode_text(value: str) -> None:
    """Refuse an unpaired surrogate (JSON's "\\ud800"): no UTF-8 encoder takes it, so neither
    the password hash nor the database could, and the request would end in a 500."""
    if SURROGATE.search(value):
        raise ValidationError("must be Unicode text: an unpaired surrogate is not")


SURROGATE = re.compile("[\ud800-\udfff]")
PASSWORD = [validate.Length(min=8, max=1024), unicode_text]


class UTCDateTime(fields.DateTime):
    """RFC 3339 in UTC with a `Z` and microseconds, e.g. `2026-11-21T10:00:00.123456Z`."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else rfc3339(value)


class RFC3339DateTime(fields.AwareDateTime):
    """An RFC 3339 date-time with its offset, e.g. `2026-11-21T10:00:00Z` or
    `2026-11-21T12:00:00.5+02:00`; other ISO 8601 forms (`20261121T100000Z`, no seconds,
    `+0200`) are not RFC 3339 and are refused. `t`/`z` and a space for `T` are allowed (RFC 3339,
    section 5.6)."""

    FORMAT = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not self.FORMAT.fullmatch(value):
            raise ValidationError(
                "must be an RFC 3339 date-time with an offset, e.g. 2026-11-21T10:00:00Z"
            )
        moment = super()._deserialize(value.upper(), attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValidationError("is out of range") from None


class StrictBoolean(fields.Boolean):
    """JSON `true` or `false`, nothing else: marshmallow's Boolean also takes 1, "yes", "on"..."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


def no_nul(value: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it as a bad value, not a database error."""
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters")


# What no_nul refuses, as the OpenAPI document says it.
NO_NUL = {"pattern": "^[^\\u0000]*$"}


class ErrorBodySchema(ma.Schema):
    status = fields.Integer(required=True, metadata={"description": "The HTTP status."})
    code = fields.String(required=True, metadata={"example": "bad_request"})
    message = fields.String(required=True)
    details = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Validation errors only: each bad field and its messages."},
    )


class ErrorSchema(ma.Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class UserSchema(ma.Schema):
    id = fields.Integer(dump_only=True)
    username = fields.String(required=True, validate=USERNAME, metadata=USERNAME_PATTERN)
    is_admin = StrictBoolean(load_default=False)
    created_at = UTCDateTime(dump_only=True)


class NewUserSchema(UserSchema):
    password = fields.String(required=True, load_only=True, validate=PASSWORD)


class UserStatusSchema(UserSchema):
    disabled = fields.Boolean(
        dump_only=True,
        metadata={"description": "A disabled user cannot log in and has no live token."},
    )


class UserUpdateSchema(ma.Schema):
    disabled = StrictBoolean(
        required=True,
        metadata={
            "description": "`true` disables the user and revokes every token of theirs at once."
        },
    )


class PasswordChangeSchema(ma.Schema):
    current_password = fields.String(
        required=True, load_only=True, validate=[validate.Length(min=1, max=1024), unicode_text]
    )
    new_password = fields.String(required=True, load_only=True, validate=PASSWORD)


class LoginSchema(ma.Schema):
    """JSON credentials: both fields, unless HTTP Basic carries them and there is no body."""

    username = fields.String(validate=validate.Length(min=1, max=256))
    password = fields.String(validate=[validate.Length(min=1, max=1024), unicode_text])

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _both_unless_basic(self, data: dict, original, **kwargs) -> None:
        if not isinstance(original, dict):
            return  # not an object at all: marshmallow has said so already
        if request.authorization and request.authorization.type == "basic" and not original:
            return
        missing = {
            name: ["Missing data for required field."]
            for name in ("username", "password")
            if name not in original
        }
        if missing:
            raise ValidationError(missing)


class TokenSchema(ma.Schema):
    token = fields.String(required=True, metadata={"description": "Send as `Bearer <token>`."})
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_at = UTCDateTime(required=True)
    user = fields.Nested(UserSchema, required=True)


class MessageSchema(ma.Schema):
    message = fields.String(required=True)


class UserListSchema(ma.Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)


def log_field(spec: AuditField) -> fields.Field:
    """The marshmallow field of an audit row's field, of the kind its column holds."""
    kind = (
        UTCDateTime
        if isinstance(spec.type, DBDateTime)
        else fields.Integer
        if spec.type.python_type is int
        else fields.Dict
        if spec.type.python_type is dict
        else fields.String
    )
    return kind(allow_none=spec.nullable, **spec.api)


# One row of the trail, as the API shows it: the fields of models.AUDIT_FIELDS that have `api`.
LogSchema = ma.Schema.from_dict(
    {spec.name: log_field(spec) for spec in AUDIT_FIELDS if spec.api is not None}, name="LogSchema"
)
LOG_FIELDS = tuple(LogSchema().fields)


def logs_as_json(rows: list) -> list[dict]:
    """What LogSchema(many=True).dump(rows) gives for result rows of the log's columns, at a
    fraction of the cost (a page has 1,300 fields): the values are picked by position."""
    if not rows:
        return []
    pick = operator.itemgetter(*(rows[0]._fields.index(name) for name in LOG_FIELDS))
    items = [dict(zip(LOG_FIELDS, pick(row), strict=True)) for row in rows]
    for item in items:
        item["created_at"] = rfc3339(item["created_at"])
    return items


class LogPageSchema(ma.Schema):
    items = fields.List(fields.Nested(LogSchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as `after` for the next page."},
    )


class ChoiceList(DelimitedList):
    """`WARNING,ERROR`: one or more of `choices`, comma separated, case-insensitive."""

    def __init__(self, choices: tuple[str, ...], what: str, **kwargs):
        super().__init__(
            fields.String(validate=validate.OneOf(choices)),
            validate=validate.Length(min=1, error=f"name at least one {what}"),
            **kwargs,
        )
        self._fold = str.upper if choices[0].isupper() else str.lower

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(self._fold(str(value)), attr, data, **kwargs)


class LogFiltersSchema(ma.Schema):
    """The filters that /v1/logs and its export share."""

    user = fields.String(validate=[validate.Length(min=1, max=64), no_nul], metadata=NO_NUL)
    ip = fields.String(
        metadata={
            "description": "An IPv4 or IPv6 address.",
            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
        }
    )
    level = ChoiceList(
        LEVELS,
        "level",
        metadata={
            "description": "One or more levels, comma separated,"
            " case-insensitive, e.g. `WARNING,error`."
        },
    )
    source = fields.String(validate=validate.OneOf(SOURCES))
    event = fields.String(validate=[validate.Length(min=1, max=64), no_nul], metadata=NO_NUL)
    since = RFC3339DateTime(metadata={"description": "RFC 3339; inclusive."})
    until = RFC3339DateTime(metadata={"description": "RFC 3339; exclusive."})
    q = fields.String(
        validate=[validate.Length(min=1, max=256), no_nul],
        metadata={"description": "Case-insensitive substring of `track`.", **NO_NUL},
    )
    target = fields.String(
        validate=[validate.Length(min=1, max=255), no_nul],
        metadata={"description": "Exact name of what was acted on, e.g. a username.", **NO_NUL},
    )
    target_type = fields.String(
        validate=[validate.Length(min=1, max=32), no_nul],
        metadata={"description": "Exact kind of target: `user`, `token`, `trail`...", **NO_NUL},
    )
    outcome = ChoiceList(
        OUTCOMES,
        "outcome",
        metadata={
            "description": "One or more of `success`, `failure`, `denied`, `error`, comma"
            " separated. Rows written before the structured record (chain version 1) have none."
        },
    )

    @validates("ip")
    def _ip_address(self, value: str, **kwargs) -> None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValidationError("must be an IPv4 or IPv6 address") from None

    @validates_schema
    def _time_range(self, data: dict, **kwargs) -> None:
        if "since" in data and "until" in data and data["until"] <= data["since"]:
            raise ValidationError("must be later than since", "until")


# The shape of a cursor (itsdangerous' signed, URL-safe base64 `payload.signature`); only this
# service's signature makes one valid.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"


class LogQuerySchema(LogFiltersSchema):
    order = fields.String(load_default="desc", validate=validate.OneOf(["desc", "asc"]))
    limit = fields.Integer(
        load_default=100,
        strict=False,
        validate=validate.Range(min=1, max=1000, error="must be between 1 and 1000"),
    )
    after = fields.String(
        metadata={
            "description": "The `next` cursor of the previous page.",
            "pattern": CURSOR_PATTERN,
        }
    )


# The names of audit.export.MEDIA_TYPES and audit.stats.BUCKETS (tests/test_audit_fields.py
# checks that they agree): this module only describes the API and imports nothing of the trail.
EXPORT_FORMATS = ("ndjson", "csv")
STATS_BUCKETS = ("hour", "day")


class LogExportSchema(LogFiltersSchema):
    format = fields.String(
        load_default="ndjson",
        validate=validate.OneOf(list(EXPORT_FORMATS)),
        metadata={
            "description": "`ndjson` (one JSON object per line) or"
            " `csv` (a header row, then one row each)."
        },
    )


class LogStatsQuerySchema(LogFiltersSchema):
    """The filters of /v1/logs, and the size of the buckets to count rows in."""

    bucket = fields.String(
        load_default="hour",
        validate=validate.OneOf(list(STATS_BUCKETS)),
        metadata={"description": "`hour` (default) or `day`, in UTC."},
    )


class BucketSchema(ma.Schema):
    start = UTCDateTime(
        required=True,
        metadata={"description": "The bucket's first instant, on the hour (or midnight), UTC."},
    )
    total = fields.Integer(required=True, metadata={"description": "Rows in the bucket."})
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={
            "description": "Rows in the bucket per level; every level is named, 0 included.",
            "example": {"DEBUG": 0, "INFO": 12, "WARNING": 3, "ERROR": 0, "CRITICAL": 0},
        },
    )


class LogStatsSchema(ma.Schema):
    bucket = fields.String(required=True, metadata={"enum": list(STATS_BUCKETS)})
    since = UTCDateTime(required=True, metadata={"description": "Counted from here (inclusive)."})
    until = UTCDateTime(required=True, metadata={"description": "... to here (exclusive)."})
    total = fields.Integer(required=True, metadata={"description": "Rows in the whole range."})
    buckets = fields.List(
        fields.Nested(BucketSchema),
        required=True,
        metadata={
            "description": "Every bucket the range overlaps, oldest first, empty ones included."
        },
    )


class VerdictSchema(ma.Schema):
    """What `flask audit verify` and GET /v1/logs/verify find."""

    intact = fields.Boolean(required=True)
    rows = fields.Integer(required=True, metadata={"description": "Rows walked."})
    first_id = fields.Integer(required=True, allow_none=True)
    last_id = fields.Integer(required=True, allow_none=True)
    signed_up_to = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The last row vouched for by a signed checkpoint."},
    )
    broken_row = fields.Integer(required=True, allow_none=True)
    problem = fields.String(required=True, allow_none=True)
    versions = fields.List(
        fields.List(fields.Integer()),
        required=True,
        metadata={
            "description": "Where each chain version begins, `[version, first row]` in row order"
            " (up to the first broken row).",
            "example": [[1, 1], [2, 10482]],
        },
    )


class IndexSchema(ma.Schema):
    service = fields.String(required=True, metadata={"example": "flask-audit-trail"})
    version = fields.String(required=True)
    links = fields.Dict(
        keys=fields.String(),
        values=fields.Url(),
        required=True,
        metadata={"description": "Absolute URLs of the API's entry points."},
    )


class HealthSchema(ma.Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ReadySchema(ma.Schema):
    status = fields.String(required=True, metadata={"example": "ready"})
    migration = fields.String(required=True, metadata={"description": "The schema's revision."})
    spooled_events = fields.Integer(
        required=True,
        metadata={"description": "Audit events waiting in the local spool for the database."},
    )
