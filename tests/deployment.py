"""Reading the deployment files as Docker would: the Dockerfile, docker-compose.yml, .env.

No Docker engine runs on the test machines, so these read what the engine would be given and
turn it into what it would run: the app service's command and environment, the image's
environment, the health checks.
"""

import re
import shlex
import subprocess
from pathlib import Path

import yaml

import config

DOCKERFILE = config.ROOT / "Dockerfile"
COMPOSE_FILE = config.ROOT / "docker-compose.yml"
ENV_EXAMPLE = config.ROOT / ".env.example"
DOCKERIGNORE = config.ROOT / ".dockerignore"


# --- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last FROM's stage: what the image is made of."""
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def image_environment() -> dict[str, str]:
    """The ENV of the image's final stage, as set (no $VAR expanded)."""
    environment = {}
    for keyword, arguments in final_stage(dockerfile_instructions()):
        if keyword == "ENV":
            environment.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return environment


def healthcheck_command() -> list[str]:
    """The exec form of the image's HEALTHCHECK CMD."""
    [arguments] = [
        args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "HEALTHCHECK"
    ]
    return yaml.safe_load(arguments.split(" CMD ", 1)[1])  # a JSON array is YAML too


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: the last rule that matches
    the path or one of its folders wins (`!` rules take back in)."""
    parts = path.split("/")
    paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        pattern = _dockerignore_pattern(rule.lstrip("!").rstrip("/"))
        if any(pattern.fullmatch(candidate) for candidate in paths):
            ignored = not rule.startswith("!")
    return ignored


def _dockerignore_pattern(rule: str) -> re.Pattern:
    """Docker's rule syntax: `*` and `?` within one path segment, `**` across segments."""
    regex, i = "", 0
    while i < len(rule):
        if rule.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif rule.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif rule[i] in "*?":
            regex, i = regex + ("[^/]*" if rule[i] == "*" else "[^/]"), i + 1
        else:
            regex, i = regex + re.escape(rule[i]), i + 1
    return re.compile(regex)


# --- docker-compose.yml and .env -------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    """The variables .env.example sets (its uncommented KEY=VALUE lines)."""
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"[A-Z_][A-Z0-9_]*=", line)
    )
    return dict(pairs)


class MissingVariable(ValueError):
    """A ${NAME:?message} whose variable is unset or empty: compose refuses to start."""


_VARIABLE = re.compile(
    r"\$(?:(?P<dollar>\$)|(?P<bare>[A-Za-z_]\w*)"
    r"|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}, ${NAME:+other}, ${NAME+other}."""

    def substitute(match: re.Match) -> str:
        if match["dollar"]:
            return "$"
        name = match["bare"] or match["name"]
        value, op, arg = variables.get(name), match["op"] or "", match["arg"]
        missing = (value is None) if op in ("-", "?", "+") else not value
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def compose_variables(text: str) -> set[str]:
    """The names of the variables a compose file interpolates."""
    return {
        match["bare"] or match["name"] for match in _VARIABLE.finditer(text) if not match["dollar"]
    }


def duration_seconds(duration: str) -> float:
    """A compose duration such as `1m30s` or `40s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def run_shell(command: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """A CMD-SHELL health check: `/bin/sh -c COMMAND`."""
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=timeout
    )
