"""What /v1/openapi.json must say that APIFairy's decorators cannot, added once it is built.

Every response the API can give is in the document, so a client (or schemathesis) can rely on
it: the errors any route may answer with, the export's two media types, `level` as the
comma-separated text it is, and the document's own route. Its `servers` come from the
settings, never from a request: PUBLIC_URL, or `/` (the host the document was fetched from).
"""

from flask import current_app

from backend.errors import NOT_JSON, TOO_LARGE
from backend.extensions import apifairy
from backend.models import LEVELS

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
# Answers any route may give: a crash, and (for every audited route, which is all but
# /healthz) an audit trail that cannot record the request.
ANY_ROUTE = {"500": "The server failed; the body says nothing more"}
AUDITED = {"503": "The audit trail cannot record the request right now; try again later"}
WITH_BODY = {"413": TOO_LARGE, "415": NOT_JSON}
NOT_AUDITED = ("/healthz",)


@apifairy.process_apispec
def complete(spec: dict) -> dict:
    """Add to the generated document what the decorators leave out."""
    # APIFairy writes the Host of the request that happened to build the document.
    spec["servers"] = [{"url": current_app.config["PUBLIC_URL"] or "/"}]
    spec["paths"]["/v1/openapi.json"] = {"get": _document_route()}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            extra = {
                **ANY_ROUTE,
                **({} if path in NOT_AUDITED else AUDITED),
                **(WITH_BODY if "requestBody" in operation else {}),
            }
            for status, description in extra.items():
                operation["responses"].setdefault(
                    status, {"description": description, "content": ERROR_BODY}
                )
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "level" and parameter["in"] == "query":
                    _comma_separated_levels(parameter)
            if any(status.startswith("2") for status in operation["responses"] if status != "204"):
                # APIFairy adds a 204 to a route documented by @other_responses alone.
                operation["responses"].pop("204", None)
    _streamed_export(spec["paths"]["/v1/logs/export"]["get"])
    # HTTP Basic alone, with no body, logs in, and so does a JSON body alone.
    login = spec["paths"]["/login"]["post"]
    login["requestBody"]["required"] = False
    login["security"] = [{"basic_auth": []}, {}]
    # Both fields; `{}` only says "no credentials here" (HTTP Basic carries them, or it is
    # answered with a challenge).
    spec["components"]["schemas"]["Login"]["anyOf"] = [
        {"required": ["username", "password"]},
        {"maxProperties": 0},
    ]
    return spec


def _comma_separated_levels(parameter: dict) -> None:
    """`level=WARNING,error` is one text value, not an array repeated as `level=...&level=...`."""
    level = "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in name) for name in LEVELS)
    parameter["schema"] = {
        "type": "string",
        "pattern": f"^(?:{level})(?:,(?:{level}))*$",
        "example": "WARNING,ERROR",
    }
    parameter.pop("explode", None)
    parameter.pop("style", None)


def _streamed_export(operation: dict) -> None:
    """The export answers a file in one of two media types, not JSON."""
    operation["responses"]["200"] = {
        "description": "Every matching row, oldest first, streamed: one JSON object per line"
        " (`format=ndjson`), or CSV with a header row (`format=csv`)",
        "headers": {
            "Content-Disposition": {
                "schema": {"type": "string"},
                "description": '`attachment; filename="audit-log.ndjson"` (or `.csv`)',
            }
        },
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }


def _document_route() -> dict:
    return {
        "operationId": "openapi_document",
        "summary": "This OpenAPI 3 document",
        "tags": ["V1"],
        "responses": {
            "200": {
                "description": "The OpenAPI document",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }
