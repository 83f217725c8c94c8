"""backend/gunicorn_conf.py: the settings gunicorn resolves from it, and what they do when served.

The settings are read back from gunicorn itself (`--print-config`), under a given environment;
the client-address rules are checked against a real gunicorn on a loopback port.
"""

import json
import os
import subprocess
from base64 import b64encode
from contextlib import ExitStack
from pathlib import Path

import pytest

import config
from tests.serving import (
    BIN,
    Client,
    access_log,
    free_port,
    make_run_command,
    raw_exchange,
    running,
)

ADMIN = ("admin", "gunicorn-admin-password-1")
# What a client claims in its own headers, and what the proxy in front of the app appends.
CLAIMED, PROXY_SEEN = "203.0.113.66", "198.51.100.7"


def print_config(**environ: str) -> subprocess.CompletedProcess:
    """`gunicorn --print-config` with our config, under `environ`. Unset is pinned as empty
    (which means the default too), so that a developer's .env cannot fill it in."""
    env = {
        "PATH": os.defpath,
        "GUNICORN_WORKERS": "",
        "TRUSTED_PROXY_HOPS": "",
        "FORWARDED_ALLOW_IPS": "",
        **environ,
    }
    return subprocess.run(
        [BIN / "gunicorn", "-c", "python:backend.gunicorn_conf", "--print-config", "wsgi:app"],
        cwd=config.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def gunicorn_settings(**environ: str) -> dict[str, str]:
    """gunicorn's own view of its settings, resolved from our config under `environ`."""
    done = print_config(**environ)
    assert done.returncode == 0, done.stderr
    return dict(
        (part.strip() for part in line.split("=", 1))
        for line in done.stdout.splitlines()
        if " = " in line
    )


# --- settings ----------------------------------------------------------------------------------
def test_the_boot_refuses_a_bad_gunicorn_setting_before_touching_the_database(tmp_path):
    database = tmp_path / "audit.db"
    env = {
        "PATH": os.defpath,
        "INSTANCE_PATH": str(tmp_path),
        "GUNICORN_WORKERS": "many",
        "DATABASE_URL": f"sqlite:///{database}",
    }
    done = subprocess.run(
        make_run_command(free_port()),
        cwd=config.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert (
        done.stderr == "configuration error: GUNICORN_WORKERS must be a whole number, not 'many'\n"
    )
    assert not database.exists()


def test_gevent_workers_default_to_twice_the_cpus_plus_one():
    settings = gunicorn_settings()
    assert settings["workers"] == str(2 * config.container_cpus() + 1)
    assert settings["worker_class"] == "gevent"


def test_workers_come_from_the_environment():
    assert gunicorn_settings(GUNICORN_WORKERS="3")["workers"] == "3"


def test_a_bad_worker_count_is_refused_with_its_name():
    done = print_config(GUNICORN_WORKERS="0")
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "\nError: GUNICORN_WORKERS must be at least 1, not 0\n",
    )


def test_workers_are_recycled_with_jitter_and_each_loads_the_app_itself():
    settings = gunicorn_settings()
    assert int(settings["max_requests"]) > 0 and int(settings["max_requests_jitter"]) > 0
    assert settings["preload_app"] == "False"  # gevent patches the worker before the app loads


def test_the_master_imports_none_of_what_gevent_must_patch_first():
    """gunicorn's master loads this config; what it imports, every worker has imported before
    gevent patches it. Flask, SQLAlchemy and the drivers must come after, in the worker."""
    done = subprocess.run(
        [
            BIN / "python",
            "-c",
            "import sys, backend.gunicorn_conf\n"
            "print(sorted({name.split('.')[0] for name in sys.modules}"
            " & {'flask', 'werkzeug', 'sqlalchemy', 'psycopg', 'argon2',"
            " 'blinker', 'gevent'}))",
        ],
        cwd=config.ROOT,
        env={"PATH": os.defpath},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_no_control_socket_is_opened():
    assert gunicorn_settings()["control_socket_disable"] == "True"


def test_without_proxies_no_peer_may_set_forwarding_headers():
    settings = gunicorn_settings(TRUSTED_PROXY_HOPS="0", FORWARDED_ALLOW_IPS="*")
    assert settings["forwarded_allow_ips"] == "[]"
    assert settings["forwarder_headers"] == "[]"


@pytest.mark.parametrize(
    ("allowed", "expected"), [(None, "['*']"), ("10.0.0.0/8", "['10.0.0.0/8']")]
)
def test_behind_proxies_forwarding_headers_come_from_forwarded_allow_ips(allowed, expected):
    settings = gunicorn_settings(TRUSTED_PROXY_HOPS="1", FORWARDED_ALLOW_IPS=allowed or "")
    assert settings["forwarded_allow_ips"] == expected


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cpu_count_follows_the_cgroup_quota(tmp_path, files, cpus):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    # None: no quota, so the CPUs this process may run on.
    assert config.container_cpus(tmp_path) == (cpus or len(os.sched_getaffinity(0)))


# --- preload ----------------------------------------------------------------------------------
def test_preload_is_refused_before_any_worker_starts(tmp_path):
    """gevent must patch a worker before the app is imported; a preloading master would import
    it first."""
    env = {
        "PATH": os.defpath,
        "INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_CMD_ARGS": "--preload",
    }
    done = subprocess.run(
        [
            BIN / "gunicorn",
            "-c",
            "python:backend.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "wsgi:app",
        ],
        cwd=config.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.endswith(
        "preload_app cannot be used with gevent workers (backend/gunicorn_conf.py)\n"
    )
    assert "Booting worker" not in done.stderr


# --- the client's address, served ---------------------------------------------------------------
@pytest.fixture
def serve(tmp_path):
    """Start `make run`'s command on a fresh SQLite database with extra `environ`."""
    servers = ExitStack()

    def run(**environ: str) -> tuple[Client, Path]:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(tmp_path),
            "APP_ENV": "development",
            "INSTANCE_PATH": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
            "SECRET_KEY": "gunicorn-test-secret-key",
            "ADMIN_USERNAME": ADMIN[0],
            "ADMIN_PASSWORD": ADMIN[1],
            "GUNICORN_WORKERS": "1",
            **environ,
        }
        client, _ = servers.enter_context(running(make_run_command(port), env, log, port))
        return client, log

    with servers:
        yield run


def forwarded_login(client: Client, log: Path) -> tuple[str, str, dict]:
    """Log in with forwarding headers; return the audited address, the scheme of the links the
    app builds, and the login's access-log entry."""
    headers = {"X-Forwarded-For": f"{CLAIMED}, {PROXY_SEEN}", "X-Forwarded-Proto": "https"}
    login = client.post("/login", basic=ADMIN, headers=headers)
    assert login.status == 200, login.body
    request_id = login.headers["X-Request-ID"]
    rows = client.get("/v1/logs?event=login.success", token=login.body["token"]).body["items"]
    [row] = [row for row in rows if row["request_id"] == request_id]
    scheme = client.get("/", headers=headers).body["links"]["login"].split(":")[0]
    [entry] = [entry for entry in access_log(log) if entry["request_id"] == request_id]
    return row["ip"], scheme, entry


@pytest.mark.serving
def test_without_proxies_forwarding_headers_are_ignored(serve):
    """Gunicorn's default would trust X-Forwarded-Proto from 127.0.0.1; not here."""
    ip, scheme, entry = forwarded_login(*serve(TRUSTED_PROXY_HOPS="0"))
    assert (ip, scheme) == ("127.0.0.1", "http")
    assert (entry["client"], entry["peer"]) == ("127.0.0.1", "127.0.0.1")


@pytest.mark.serving
def test_behind_one_proxy_the_address_it_saw_is_recorded_and_logged(serve):
    """Only the hop the proxy appended counts; the client's own claim never does."""
    ip, scheme, entry = forwarded_login(*serve(TRUSTED_PROXY_HOPS="1"))
    assert (ip, scheme) == (PROXY_SEEN, "https")
    assert (entry["client"], entry["peer"]) == (PROXY_SEEN, "127.0.0.1")


@pytest.mark.serving
def test_forwarding_headers_from_a_peer_that_is_not_the_proxy_are_dropped(serve):
    """The proxy is at 192.0.2.10; a client reaching the port directly cannot pose as it."""
    ip, scheme, entry = forwarded_login(
        *serve(TRUSTED_PROXY_HOPS="1", FORWARDED_ALLOW_IPS="192.0.2.10")
    )
    assert (ip, scheme) == ("127.0.0.1", "http")
    assert (entry["client"], entry["peer"]) == ("127.0.0.1", "127.0.0.1")


# --- requests gunicorn refuses itself, and bodies of unknown length ---------------------------
FRAMING = {
    "two Content-Lengths": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "a negative Content-Length": b"Content-Length: -1\r\n\r\n{}",
    "Content-Length and chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.serving
def test_a_request_with_conflicting_framing_is_a_400_with_an_access_line(serve):
    """gunicorn refuses such a request before the app sees it (request smuggling); its own
    error answer must still be a 400 and be logged, not crash the access logger."""
    client, log = serve()
    for name, framing in FRAMING.items():
        status, _ = raw_exchange(client.base_url, b"POST /login HTTP/1.1\r\nHost: x\r\n" + framing)
        assert status == 400, name
    output = log.read_text()
    assert "Traceback" not in output
    refused = [entry for entry in access_log(log) if entry["request_id"] is None]
    assert [(entry["method"], entry["path"], entry["status"]) for entry in refused] == [
        ("POST", "/login", 400)
    ] * len(FRAMING)


def chunked_login(client: Client, password: str) -> tuple[int, bytes]:
    """A JSON login of 70 KB sent in chunks, with `password` in its HTTP Basic header."""
    body = json.dumps({"username": ADMIN[0], "password": "x" * 70_000}).encode()
    credentials = b64encode(f"{ADMIN[0]}:{password}".encode())
    head = (
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Basic " + credentials + b"\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunks = (
        b"".join(b"%X\r\n%s\r\n" % (len(part), part) for part in (body[:40_000], body[40_000:]))
        + b"0\r\n\r\n"
    )
    return raw_exchange(client.base_url, head + chunks)


@pytest.mark.serving
@pytest.mark.parametrize("password", ["not-the-password", ADMIN[1]])
def test_a_chunked_body_over_64_kib_is_413_before_the_password_is_checked_when_served(
    serve, password
):
    client, _ = serve()
    status, body = chunked_login(client, password)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_entity_too_large"
    token = client.post("/login", basic=ADMIN).body["token"]
    logins = client.get("/v1/logs?source=auth", token=token).body["items"]
    assert [row["event"] for row in logins] == ["login.success"]  # this one; none before
