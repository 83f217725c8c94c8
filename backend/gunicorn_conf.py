"""gunicorn's settings for every way the service is served: the container and `make run`.

    gunicorn -c python:backend.gunicorn_conf wsgi:app

gunicorn reads this module's names that match its settings; everything else here is a helper.
Options on the command line, and in GUNICORN_CMD_ARGS, override what is set here.
"""

import ctypes
import ctypes.util
import functools
import ipaddress
import json
import os

from dotenv import load_dotenv
from gunicorn import glogging

from backend.clock import rfc3339, utcnow
from config import ROOT, gunicorn_workers, trusted_proxy_hops

# The same .env the app reads (config.settings), so that gunicorn and the app agree on
# TRUSTED_PROXY_HOPS and GUNICORN_WORKERS; like there, a variable already set wins.
load_dotenv(ROOT / ".env")

# --- workers -------------------------------------------------------------------------------
workers = gunicorn_workers(os.environ)
# gevent: each worker serves its connections in greenlets on one thread, switching where a
# request waits (for PostgreSQL, for the client). Its concurrent requests share one audit
# commit all the same (group commit). Password hashes run on real threads and long loops pause
# (backend/concurrency.py). Faster than gthread (figures: docs/benchmarks.md, "Tuning decisions").
worker_class = "gevent"
# Each worker builds the app after gevent has patched the standard library: gunicorn
# discourages preload_app with gevent, whose patching must come before the app's imports
# (this module imports none of them). A bad setting still stops gunicorn before it serves:
# the worker exits with "application failed to load" (wsgi.py), and the master with it.
preload_app = False
# A worker restarts after this many requests (a slow leak cannot grow for ever); the jitter
# keeps all workers from restarting at the same moment. Not fewer: a restart costs new
# database connections and cold statement caches, and stalls the worker's connections
# (figures: docs/benchmarks.md, "Tuning decisions").
max_requests = 100000
max_requests_jitter = 10000
timeout = 30
# SIGTERM: stop accepting, let in-flight requests finish (their audit rows included) for up
# to this long. docker-compose.yml's stop_grace_period must be longer.
graceful_timeout = 30
keepalive = 5
# The heartbeat file of each worker: in memory, not on the container's overlay file system.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# The container listens on every interface of its own network namespace; `make run` passes
# --bind 127.0.0.1:$PORT.
bind = ["0.0.0.0:8000"]

# gunicorn >= 25 opens a control socket for `gunicornc` in ~/.gunicorn by default: an
# unwritable home for the container's user, and one shared path for every gunicorn of a user on
# a machine. The service is run by signals (docker stop, SIGHUP), so it has none.
control_socket_disable = True


# --- the client's address ------------------------------------------------------------------
# ProxyFix (backend.register_proxy_fix) takes X-Forwarded-For/-Proto from exactly
# TRUSTED_PROXY_HOPS proxies. gunicorn agrees: with no proxy it trusts forwarding headers from
# no one (its default trusts 127.0.0.1, so a local client could claim https); behind proxies
# it accepts them only from FORWARDED_ALLOW_IPS (default: any peer, as the proxies' addresses
# are seldom known in a container network), and pre_request strips them from anyone else
# before ProxyFix sees them.
TRUSTED_PROXY_HOPS = trusted_proxy_hops(os.environ)
forwarded_allow_ips = (os.environ.get("FORWARDED_ALLOW_IPS") or "*") if TRUSTED_PROXY_HOPS else ""
# No peer may rewrite SCRIPT_NAME or PATH_INFO through headers: the app is not mounted under a
# prefix, and the Link URLs it builds must not be steerable.
forwarder_headers = ""


def peer_is_trusted_proxy(peer, allowed: list[str]) -> bool:
    """Whether `peer` (a socket address) is in `allowed` (addresses, networks or "*")."""
    if not isinstance(peer, tuple):  # a Unix socket: only the host's own processes reach it
        return True
    if "*" in allowed:
        return True
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(allowed)))


@functools.cache
def _networks(allowed: tuple[str, ...]) -> list:
    return [ipaddress.ip_network(network) for network in allowed]


def pre_request(worker, req) -> None:
    """Forwarding headers count only from a trusted proxy: drop them from anyone else.

    With no trusted hop nothing reads them (no ProxyFix, gunicorn trusts no one): no work."""
    allowed = worker.cfg.forwarded_allow_ips
    if TRUSTED_PROXY_HOPS and not peer_is_trusted_proxy(req.peer_addr, allowed):
        req.headers = [
            (name, value)
            for name, value in req.headers
            if not name.startswith("X-FORWARDED-") and name != "FORWARDED"
        ]


M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def on_starting(server) -> None:
    """Before workers are forked (they inherit the setting); refuses --preload."""
    if server.cfg.preload_app:
        # The master would import the app before a worker's gevent patches the standard
        # library: psycopg would wait on PostgreSQL holding the worker's one thread, and the
        # pools' locks would be real ones, which a greenlet can wait on for ever.
        raise SystemExit(
            "preload_app cannot be used with gevent workers (backend/gunicorn_conf.py)"
        )
    release_large_blocks()


def release_large_blocks() -> None:
    """Have glibc give every freed block of 128 KiB or more back to the system.

    A login's Argon2id hash takes 19 MiB. glibc serves that with mmap and unmaps it when freed,
    but then raises its mmap threshold to that size, so the next ones come from the heap of the
    thread that hashed, where they stay: some 19 MiB per thread that ever checked a password
    (figures: docs/benchmarks.md, "Tuning decisions"). A fixed threshold turns that adjustment
    off (mallopt(3), M_MMAP_THRESHOLD; MALLOC_MMAP_THRESHOLD_=131072 in the environment does
    the same).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass


def when_ready(server) -> None:
    """Say once how the service is served (the access log then has one line per request)."""
    server.log.info(
        "serving with %d %s workers; trusted proxy hops: %d",
        server.cfg.workers,
        server.cfg.worker_class_str,
        TRUSTED_PROXY_HOPS,
    )


def post_worker_init(worker) -> None:
    """`service.start` on the trail: this worker has loaded the app and begins serving."""
    from backend.audit.subscribers import record_service

    record_service(worker.wsgi, "service.start", f"worker {worker.pid} serving")


def worker_exit(server, worker) -> None:
    """`service.stop` on the trail: this worker stopped serving (a graceful stop, a restart
    after max_requests; a worker killed outright writes nothing)."""
    from backend.audit.subscribers import record_service

    if getattr(worker, "wsgi", None) is not None:
        record_service(worker.wsgi, "service.stop", f"worker {worker.pid} stopped")


# --- logs ------------------------------------------------------------------------------------
class JsonAccessLogger(glogging.Logger):
    """gunicorn's logger, with one JSON object per request on the access log.

    `client` is the address the audit trail records (after ProxyFix), `peer` the socket's; the
    request id is the one of the response's X-Request-ID header and of the request's audit rows.
    The Authorization header, and so no password or token, is never written.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        original = environ.get("werkzeug.proxy_fix.orig") or environ
        request_id = next(
            (value for name, value in resp.headers if name.lower() == "x-request-id"), None
        )
        entry = {
            "time": rfc3339(utcnow()),
            "client": environ.get("REMOTE_ADDR"),
            "peer": original.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            # A request gunicorn refused itself reached no app: its environ has no PATH_INFO.
            "path": environ.get("PATH_INFO", getattr(req, "path", None)),
            "query": environ.get("QUERY_STRING", ""),
            "status": status_code(resp),
            "bytes": resp.sent,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": request_id,
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }
        self.access_log.info(json.dumps(entry))


def status_code(resp) -> int:
    """The response's status as a number. gunicorn's own error answers (a malformed request:
    400, 414, 431, ...) are a bare Response whose status is only its text, "400 Bad Request";
    status_code is set when the app starts its response."""
    code = getattr(resp, "status_code", None)
    return code if code is not None else int(str(resp.status).split(None, 1)[0])


logger_class = JsonAccessLogger
# Standard output by default; GUNICORN_ACCESS_LOG="" turns it off (bench/throughput.py does,
# as its peer logs nothing), a path writes there.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"
