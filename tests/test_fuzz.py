"""schemathesis against the served API, as an outside tester runs `st run --checks all`.

`make run`'s gunicorn serves each database (tests/serving.py); schemathesis' engine (the one
behind its command line) reads /v1/openapi.json and runs every phase (explicit examples,
coverage of each constraint's edges, fuzzing with valid and invalid data, stateful where the
document has links) with every check: a 5xx, an undocumented status, content type or header,
a body that is not what the document says, invalid data accepted or valid data refused, a
method or a missing header answered wrongly, a route that ignores its auth. Any of those, and
any error of the run itself, fails the test.

Bounded and repeatable: MAX_EXAMPLES cases per operation and phase, one pass of each phase
(no `max-time`: with one, the engine repeats fuzzing until the time is spent), a fixed seed
and derandomized generation (the same requests every run), no example database or cache on
disk, one worker, and a timeout on every request so a hang fails rather than stalls CI.
"""

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from tests.conftest import ADMIN, basic
from tests.serving import serving

pytestmark = pytest.mark.serving

MAX_EXAMPLES = 25
REQUEST_TIMEOUT = 30  # seconds
SEED = 20261204
STREAM = "/v1/logs/stream"
# What positive_data_acceptance takes by default (schemathesis 4.32), and 400.
VALID_DATA_MAY_GET_400 = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]


def engine_config() -> schemathesis.Config:
    """`st run --checks all --phases examples,coverage,fuzzing,stateful --seed SEED
    --generation-deterministic --max-examples MAX_EXAMPLES --generation-database none`."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT,
            # Nothing learnt by an earlier run changes this one, and nothing is left on disk.
            "cache": {"enabled": False},
            "workers": 1,
            "checks": {"enabled": True},
            "phases": {
                name: {"enabled": True} for name in ("examples", "coverage", "fuzzing", "stateful")
            }
            # Error feedback (a generation aid, not a check) learns from our 400s and then sent
            # `{"error": {"details": {"username": ...}}, ...}` to /login as valid data, which
            # the document's additionalProperties: false says it is not; so it is off.
            | {"fuzzing": {"enabled": True, "error-feedback": {"enabled": False}}},
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "operations": [
                # An endless response (Server-Sent Events, a heartbeat every few seconds)
                # never ends for a request/response fuzzer; tests/test_stream*.py check it.
                {"include-path": STREAM, "enabled": False},
                {
                    # Rules JSON Schema cannot state, so valid-looking data may get a 400
                    # there: `until` after `since`, at most 1000 buckets, `after` a cursor
                    # this service signed, tree sizes within the tree and `first` at most
                    # `second` (each 400 names its field; see test_logs.py, test_stats.py and
                    # test_tree.py).
                    "include-path-regex": (
                        "^/v1/logs(/export|/stats|/stream|/consistency|/\\{log_id\\}/proof)?$"
                    ),
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": VALID_DATA_MAY_GET_400}
                    },
                },
            ],
        }
    )


def credentials(api, token: str) -> type:
    """The auth of each case: HTTP Basic for /login; for /logout, which revokes the token it
    is sent with, a token of its own each time; the admin's token everywhere else."""

    class Credentials:
        def get(self, case, context) -> str:
            if case.path == "/login":
                return basic(*ADMIN)["Authorization"]
            if case.path == "/logout":
                return f"Bearer {api.issue_token(ADMIN[0])}"
            return f"Bearer {token}"

        def set(self, case, data: str, context) -> None:
            case.headers = {**(case.headers or {}), "Authorization": data}

    return Credentials


def run(schema) -> tuple[dict, set]:
    """Run the engine; return its failures and errors by operation, and the operations run."""
    problems: dict[str, set[str]] = {}
    exercised = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            if event.status != Status.SKIP:
                exercised.add(event.recorder.label)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.failure_info is not None:
                        failure = node.failure_info.failure
                        problems.setdefault(event.recorder.label, set()).add(
                            f"{node.name} ({event.phase}): {failure.title}\n{failure.message}\n"
                            f"{node.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            label = getattr(event, "label", "the run")
            problems.setdefault(label, set()).add(f"error: {event.info.format()}")
    return problems, exercised


def test_the_api_keeps_to_its_document(database_url, api, users, tmp_path):
    server_path = tmp_path / "server"
    server_path.mkdir()
    with serving(database_url, server_path) as (client, _):
        schema = schemathesis.openapi.from_url(
            f"{client.base_url}/v1/openapi.json", config=engine_config()
        )
        schema.auth(refresh_interval=None)(credentials(api, users["admin"]))
        problems, exercised = run(schema)
    assert not problems, "\n\n".join(
        f"{label}:\n" + "\n".join(sorted(found)) for label, found in sorted(problems.items())
    )
    fuzzed = {
        operation.ok().label
        for operation in schema.get_all_operations()
        if operation.ok().path != STREAM
    }
    assert fuzzed <= exercised
