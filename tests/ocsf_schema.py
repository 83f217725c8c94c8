"""The OCSF schema, as the tests check events against it: the official schema export that the
`ocsf-json-schema` package ships (no network), turned into a JSON Schema (draft 2020-12) per
class by that package, and checked by `jsonschema`."""

from functools import cache

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from backend.audit.ocsf import OCSF_VERSION


@cache
def schema() -> OcsfJsonSchemaEmbedded:
    """The packaged OCSF schema of the version the export writes."""
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))


@cache
def validator(class_uid: int) -> Draft202012Validator:
    """A validator for events of `class_uid` (no profile: the export declares none)."""
    ocsf = schema()
    json_schema = ocsf.get_class_schema(ocsf.lookup_class_name_from_uid(class_uid), profiles=[])
    return Draft202012Validator(json_schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(event: dict) -> list[str]:
    """Every way `event` breaks the schema of its class, as `path: message` lines."""
    errors = validator(event["class_uid"]).iter_errors(event)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors]


def class_caption(class_uid: int) -> tuple[str, int, str]:
    """The class's caption, its category's uid and caption, as the schema names them."""
    ocsf = schema()
    found = ocsf.schema.schema["classes"][ocsf.lookup_class_name_from_uid(class_uid)]
    return found["caption"], found["category_uid"], found["category_name"]


def activity_caption(class_uid: int, activity_id: int) -> str:
    """The caption of `activity_id` in the class, as the schema names it."""
    ocsf = schema()
    found = ocsf.schema.schema["classes"][ocsf.lookup_class_name_from_uid(class_uid)]
    return found["attributes"]["activity_id"]["enum"][str(activity_id)]["caption"]
