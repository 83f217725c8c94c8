"""An audit row's fields are declared once (models.AUDIT_FIELDS): the table's columns, the
event, the hash, the export and the API schema all follow that declaration."""

from dataclasses import MISSING, fields

from backend.audit import chain, export, stats
from backend.audit.events import COLUMN_LENGTHS, AuditEvent
from backend.models import AUDIT_FIELDS, Log
from backend.schemas import EXPORT_FORMATS, LOG_FIELDS, STATS_BUCKETS, LogSchema
from tests.helpers import FIRST_RELEASE_FIELDS, STRUCTURED_FIELDS

NAMES = tuple(spec.name for spec in AUDIT_FIELDS)


def test_the_table_has_a_column_per_field_in_order():
    columns = Log.__table__.columns
    assert tuple(column.name for column in columns) == NAMES
    for spec in AUDIT_FIELDS:
        assert columns[spec.name].type is spec.type
        assert columns[spec.name].nullable is spec.nullable


# The first release's fields, with `event_id` third: what chain version 1 hashes, in order.
V1 = (*FIRST_RELEASE_FIELDS[:2], "event_id", *FIRST_RELEASE_FIELDS[2:])
STRUCTURED = STRUCTURED_FIELDS


def test_chain_version_1_covers_the_first_releases_fields_in_their_order():
    """Never changes: every row written before migration 0008 is verified with it."""
    assert chain.HASHED_FIELDS_OF[1] == V1


def test_chain_version_2_covers_the_structured_record_and_the_version_itself():
    assert chain.HASHED_FIELDS == chain.HASHED_FIELDS_OF[2]
    assert chain.HASHED_FIELDS == tuple(spec.name for spec in AUDIT_FIELDS if spec.hashed)
    assert chain.HASHED_FIELDS == (*V1, *STRUCTURED, "chain_version")


def test_an_event_holds_every_field_the_chain_does_not_give():
    by_name = {spec.name: spec for spec in AUDIT_FIELDS}
    event_fields = fields(AuditEvent)
    assert [field.name for field in event_fields] == [
        spec.name for spec in AUDIT_FIELDS if not spec.by_chain
    ]
    for field in event_fields:
        spec = by_name[field.name]
        if spec.default_factory is not None:
            assert field.default_factory is spec.default_factory
        else:
            assert field.default is (None if spec.nullable else MISSING)


def test_an_event_is_cut_to_its_columns_lengths():
    assert COLUMN_LENGTHS == {
        column.name: column.type.length
        for column in Log.__table__.columns
        if column.name in {f.name for f in fields(AuditEvent)}
        and getattr(column.type, "length", None)
    }


def test_the_api_shows_the_fields_with_api_options_in_order():
    api = tuple(spec.name for spec in AUDIT_FIELDS if spec.api is not None)
    assert tuple(LogSchema().fields) == LOG_FIELDS == api
    required = {name for name, field in LogSchema().fields.items() if field.required}
    assert required == {spec.name for spec in AUDIT_FIELDS if (spec.api or {}).get("required")}


def test_the_export_has_the_api_fields_then_those_for_offline_verification():
    assert export.FIELDS == (
        *FIRST_RELEASE_FIELDS,
        *STRUCTURED,
        "event_id",
        "chain_version",
        "prev_hash",
        "hash",
    )
    assert sorted(export.FIELDS) == sorted(NAMES)


def test_the_schemas_name_the_formats_and_buckets_the_trail_knows():
    assert EXPORT_FORMATS == tuple(export.MEDIA_TYPES)
    assert STATS_BUCKETS == tuple(stats.BUCKETS)
