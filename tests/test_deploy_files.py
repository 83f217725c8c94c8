"""The deployment files themselves: hadolint on the Dockerfile, the Compose Specification's
schema on docker-compose.yml, and the properties issue #4 asks of both and of .env.example."""

import re
import subprocess

import pytest

import config
from backend import gunicorn_conf
from tests.deployment import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    MissingVariable,
    compose,
    compose_variables,
    dockerfile_instructions,
    dockerignored,
    duration_seconds,
    env_example,
    final_stage,
    healthcheck_command,
    interpolate,
)
from tests.serving import BIN

BAD_DOCKERFILE = """\
FROM python:latest
RUN pip install flask
COPY . /app
CMD python /app/wsgi.py
"""


def hadolint(path, cwd) -> subprocess.CompletedProcess:
    """hadolint on `path`, every finding (style included) failing, no user config read."""
    return subprocess.run(
        [BIN / "hadolint", "--no-color", "--failure-threshold", "style", path],
        cwd=cwd,
        env={"HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_compose_schema(path) -> subprocess.CompletedProcess:
    """check-jsonschema with its copy of the Compose Specification's schema (no network)."""
    return subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- Dockerfile ------------------------------------------------------------------------------
def test_the_dockerfile_passes_hadolint(tmp_path):
    result = hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_fails_a_careless_dockerfile(tmp_path):
    """The check above can fail: the same run finds the usual mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3025"):  # latest, unpinned, cache, shell CMD
        assert rule in result.stdout


def test_the_dockerfile_switches_no_hadolint_rule_off():
    """hadolint passes the Dockerfile as it is, with no `# hadolint ignore=` to get there."""
    assert "hadolint" not in DOCKERFILE.read_text().lower()


def test_the_image_is_built_in_stages_on_a_slim_python():
    instructions = dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    base = dict(re.findall(r"ARG (\w+)=(\S+)", DOCKERFILE.read_text()))
    for stage in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: base[m[1]], stage.split()[0])
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image), image


def test_dependencies_are_installed_before_the_code_is_copied():
    """Their layer depends on pyproject.toml alone, so a code change does not rebuild it."""
    instructions = dockerfile_instructions()
    first, second = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"][:2]
    first_stage = instructions[first:second]
    copies = [args for keyword, args in first_stage if keyword == "COPY"]
    install = next(
        i
        for i, (keyword, args) in enumerate(first_stage)
        if keyword == "RUN" and "-r /tmp/requirements.txt" in args
    )
    copied_before = [args for keyword, args in first_stage[:install] if keyword == "COPY"]
    assert copied_before == ["pyproject.toml ./"]
    assert any("backend/" in args for args in copies[1:])


def test_the_image_runs_as_an_unprivileged_user():
    [user] = [
        args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "USER"
    ][-1:]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_image_checks_its_health_on_healthz():
    command = healthcheck_command()
    assert command[0] == "python"
    assert "http://127.0.0.1:8000/healthz" in command[-1]


def test_the_build_context_leaves_out_secrets_and_local_state():
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "instance/audit.db",
        "instance/secret_key",
        "backend/__pycache__/boot.cpython-311.pyc",
    ):
        assert dockerignored(path), path


def test_the_build_context_has_everything_the_dockerfile_copies():
    sources = [
        source
        for keyword, args in dockerfile_instructions()
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        files = (
            [path]
            if "." in path
            else [
                p.relative_to(DOCKERFILE.parent).as_posix()
                for p in (DOCKERFILE.parent / path).rglob("*.py")
                if "__pycache__" not in p.parts
            ]
        )
        assert files, source
        for file in files:
            assert not dockerignored(file), file


# --- docker-compose.yml ----------------------------------------------------------------------
def test_the_compose_file_validates_against_the_compose_specification():
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelt_key(tmp_path):
    """The check above can fail: the schema admits no unknown key."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = check_compose_schema(bad)
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stdout


def test_the_compose_file_has_no_obsolete_keys():
    model = compose()
    assert "version" not in model
    for name, service in model["services"].items():
        assert "links" not in service, name


def db_mounts() -> dict[str, str]:
    """The db service's mounts: {target: "source[:mode]"}."""
    mounts = {}
    for volume in compose()["services"]["db"]["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = ":".join([source, *mode])
    return mounts


def test_the_database_keeps_its_data_in_a_named_volume():
    name = db_mounts()["/var/lib/postgresql/data"]
    assert name in compose()["volumes"]


def test_the_database_creates_the_apps_role_on_its_first_start():
    """The postgres image runs /docker-entrypoint-initdb.d/* on an empty volume."""
    source = db_mounts()["/docker-entrypoint-initdb.d/10-app-role.sh"]
    path, mode = source.rsplit(":", 1)
    assert mode == "ro"
    assert (config.ROOT / path).read_text().startswith("#!/bin/sh\n")


def test_the_database_reports_healthy_with_pg_isready():
    kind, command = compose()["services"]["db"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and command.startswith("pg_isready ")


def test_the_app_waits_for_a_healthy_database():
    assert compose()["services"]["app"]["depends_on"] == {"db": {"condition": "service_healthy"}}


def test_the_app_runs_the_boot():
    assert compose()["services"]["app"]["command"] == ["python", "-m", "backend.boot"]
    [cmd] = [args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "CMD"]
    assert cmd == '["python", "-m", "backend.boot"]'


def test_stopping_waits_longer_than_gunicorns_graceful_timeout():
    grace = duration_seconds(compose()["services"]["app"]["stop_grace_period"])
    assert grace > gunicorn_conf.graceful_timeout


def test_compose_refuses_to_start_without_the_secrets():
    """With .env.example as it is committed (secrets blank), every secret is reported."""
    environment = compose()["services"]["app"]["environment"]
    for name in ("SECRET_KEY", "AUDIT_SIGNING_KEY", "DATABASE_URL", "DATABASE_ADMIN_URL"):
        with pytest.raises(MissingVariable):
            interpolate(environment[name], env_example())


def test_every_variable_compose_reads_is_explained_in_env_example():
    text = ENV_EXAMPLE.read_text()
    for name in compose_variables(COMPOSE_FILE.read_text()):
        match = re.search(rf"^(# )?{name}=", text, re.MULTILINE)
        assert match, f"{name} is missing from .env.example"
        # The paragraph it is in starts with a comment (a group may share one).
        paragraph = text[: match.start()].rsplit("\n\n", 1)[-1]
        assert paragraph.startswith("# ") and not re.match(r"# [A-Z_]+=", paragraph), (
            f"{name} has no comment above it"
        )
