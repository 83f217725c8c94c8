"""schemathesis against /v1/openapi.json, with a valid admin token: every documented operation,
with data that fits the document and data that does not. Any 5xx, an undocumented status or
content type, a body that is not what the document says, a request that breaks the document
yet is not refused, or a route that ignores its auth is a failure.

Bounded: MAX_EXAMPLES requests per operation and mode, derandomized (the same requests every
run), no deadline, no example database on disk. It drives the generated cases itself, through
schemathesis' Python API, rather than its pytest plugin.
"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def test_the_api_keeps_to_its_document(app, users):
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app)
    failures, fuzzed, unsatisfiable = {}, set(), set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            try:
                fuzz(operation, mode, users["admin"])
            except Unsatisfiable:  # nothing to get wrong: no parameters, no body
                unsatisfiable.add((operation.label, mode.value))
                continue
            except Exception as error:  # noqa: BLE001 (collected, then reported together)
                failures[f"{operation.label} ({mode})"] = f"{type(error).__name__}: {error}"
            fuzzed.add(operation.label)
    # Every operation is exercised, and only negative data can be impossible to make.
    assert fuzzed == {result.ok().label for result in schema.get_all_operations()}
    assert {mode for _, mode in unsatisfiable} <= {"negative"}
    assert not failures, "\n\n".join(f"{name}:\n{error}" for name, error in failures.items())


def fuzz(operation, mode: GenerationMode, token: str) -> None:
    @SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        # /login takes HTTP Basic or a JSON body, as generated; the rest, the admin's token.
        headers = None if case.path == "/login" else {"Authorization": f"Bearer {token}"}
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
