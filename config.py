"""Settings, read from the environment (and a `.env` file) as CONTRACT.md lists them.

`settings()` returns a plain dict for `app.config`; it is called by the app factory, never at
import, so tests and the CLI can change the environment first.
"""

import hmac
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent
ENVIRONMENTS = ("development", "testing", "production")
# The largest request body, in bytes: a JSON API never needs more in one request.
MAX_BODY = 64 * 1024
# gunicorn's "application failed to load": its master stops instead of respawning workers that
# can never start (wsgi.py, backend/boot.py). `flask` simply exits with it.
APP_LOAD_ERROR = 4


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


def settings(environ: Mapping[str, str] | None = None) -> dict:
    """Build the Flask configuration from `environ` (default: the process environment + .env)."""
    if environ is None:
        load_dotenv(ROOT / ".env")
        environ = os.environ
    app_env = environ.get("APP_ENV", "development")
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {app_env!r}")
    production = app_env == "production"
    instance_path = Path(environ.get("INSTANCE_PATH") or ROOT / "instance")

    database_url = environ.get("DATABASE_URL")
    if not database_url:
        if production:
            raise ConfigError("APP_ENV=production needs DATABASE_URL (e.g. postgresql://...)")
        database_url = f"sqlite:///{instance_path / 'audit.db'}"
    # The database's owner, for migrations and retention; the app serves as DATABASE_URL's
    # role, which then needs no more than INSERT and SELECT on the trail (backend/roles.py).
    admin_url = environ.get("DATABASE_ADMIN_URL") or database_url
    check_database_url("DATABASE_URL", database_url)
    check_database_url("DATABASE_ADMIN_URL", admin_url)

    secret_key = environ.get("SECRET_KEY")
    if not secret_key:
        if production:
            raise ConfigError("APP_ENV=production needs SECRET_KEY (a long random string)")
        secret_key = _development_secret(instance_path)

    signing_key = environ.get("AUDIT_SIGNING_KEY")
    if not signing_key:
        if production:
            raise ConfigError(
                "APP_ENV=production needs AUDIT_SIGNING_KEY (a long random string,"
                " kept apart from the database's backups)"
            )
        signing_key = hmac.new(secret_key.encode(), b"audit-signing-key", "sha256").hexdigest()

    pool_size = database_pool_size(environ)
    return {
        "APP_ENV": app_env,
        "TESTING": app_env == "testing",
        "SECRET_KEY": secret_key,
        "INSTANCE_PATH": str(instance_path),
        "SQLALCHEMY_DATABASE_URI": database_url_for_sqlalchemy(database_url),
        "DATABASE_ADMIN_URL": database_url_for_sqlalchemy(admin_url),
        "DATABASE_REPLICA_URL": replica_url(environ.get("DATABASE_REPLICA_URL"), database_url),
        # No overflow: past the pool, a request waits for a connection rather than open one
        # that is closed when it comes back (a PostgreSQL backend started and torn down per
        # request, under load, with SQLAlchemy's default overflow of 10); after POOL_TIMEOUT
        # seconds it gets a 503 (errors.py).
        "SQLALCHEMY_ENGINE_OPTIONS": {
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": POOL_TIMEOUT,
        },
        **export_bounds(environ, pool_size),
        "AUDIT_SIGNING_KEY": signing_key,
        "AUDIT_CHECKPOINT_EVERY": positive_int(environ, "AUDIT_CHECKPOINT_EVERY", 1000),
        # The Ed25519 key of the signed tree heads (backend/audit/signing.py): made in the
        # instance folder on first boot when unset.
        "AUDIT_SIGNING_KEY_FILE": environ.get("AUDIT_SIGNING_KEY_FILE") or None,
        # The log's name in its checkpoints (and its key's name): a schema-less URL.
        "AUDIT_LOG_ORIGIN": environ.get("AUDIT_LOG_ORIGIN") or default_origin(environ),
        # Retention (flask audit purge): PCI DSS 10.5.1 keeps a year. Tests may purge anything.
        "AUDIT_MIN_RETENTION_DAYS": positive_int(
            environ, "AUDIT_MIN_RETENTION_DAYS", 365, minimum=0 if app_env == "testing" else 1
        ),
        # `flask audit maintain` (and the boot) makes the trail's monthly partitions this many
        # months ahead of the current one (PostgreSQL; backend/audit/partitions.py).
        "AUDIT_PARTITIONS_AHEAD": positive_int(environ, "AUDIT_PARTITIONS_AHEAD", 3),
        "AUDIT_SPOOL_PATH": environ.get("AUDIT_SPOOL_PATH")
        or str(instance_path / "audit-spool.jsonl"),
        "TOKEN_TTL": positive_int(environ, "TOKEN_TTL", 3600),
        # The relay's sinks (backend/relay/config.py); GET /v1/sinks and /readyz report them.
        "AUDIT_SINKS_FILE": environ.get("AUDIT_SINKS_FILE") or None,
        # GET /v1/logs/stream (backend/v1/stream.py): streams a worker serves at once, how often
        # each looks for new rows, and the longest silence before a heartbeat comment.
        "STREAMS_PER_WORKER": positive_int(environ, "STREAMS_PER_WORKER", 100),
        "STREAM_POLL_SECONDS": positive_float(environ, "STREAM_POLL_SECONDS", 0.5),
        "STREAM_HEARTBEAT_SECONDS": positive_float(environ, "STREAM_HEARTBEAT_SECONDS", 10.0),
        # The bearer token of GET /metrics, which answers 404 while it is unset.
        "METRICS_TOKEN": environ.get("METRICS_TOKEN") or None,
        "TRUSTED_PROXY_HOPS": trusted_proxy_hops(environ),
        "PUBLIC_URL": public_url(environ.get("PUBLIC_URL")),
        # Flask (>= 3.1) answers 400 to a request whose Host is not one of these; None: any.
        "TRUSTED_HOSTS": trusted_hosts(environ.get("TRUSTED_HOSTS")),
        **_login_security(environ),
        "ADMIN_USERNAME": environ.get("ADMIN_USERNAME") or None,
        "ADMIN_PASSWORD": environ.get("ADMIN_PASSWORD") or None,
        "MAX_CONTENT_LENGTH": MAX_BODY,
        # Unhandled exceptions must reach our JSON 500 handler (and the audit) even in tests.
        "PROPAGATE_EXCEPTIONS": False,
    }


DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


def check_database_url(name: str, url: str) -> None:
    """A URL of a database the service runs on (SQLite or PostgreSQL), well formed; the message
    names the setting and the scheme, never the URL itself (it may hold a password)."""
    example = "postgresql://USER:PASSWORD@HOST:5432/NAME or sqlite:///PATH"
    scheme = url.partition(":")[0] if "://" in url else None
    if scheme not in DATABASE_SCHEMES:
        what = f"a {scheme}:// URL" if scheme else "not a URL"
        raise ConfigError(f"{name} must be {example}; it is {what}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as error:
        raise ConfigError(f"{name} is not a well-formed URL ({error}); e.g. {example}") from None
    if scheme != "sqlite" and not parts.path.strip("/"):
        raise ConfigError(f"{name} names no database; e.g. {example}")


def database_url_for_sqlalchemy(url: str) -> str:
    """Map `postgres://` and `postgresql://` to the psycopg 3 driver; leave other URLs alone."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def replica_url(raw: str | None, database_url: str) -> str | None:
    """DATABASE_REPLICA_URL: a PostgreSQL hot standby of DATABASE_URL's primary, for reads of
    the trail (backend/audit/reads.py); None when unset."""
    if not raw:
        return None
    if not raw.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        # Not echoed: the URL may hold a password.
        raise ConfigError("DATABASE_REPLICA_URL must be a postgresql:// URL")
    if not database_url_for_sqlalchemy(database_url).startswith("postgresql"):
        raise ConfigError("DATABASE_REPLICA_URL needs DATABASE_URL to be PostgreSQL too")
    return database_url_for_sqlalchemy(raw)


def trusted_proxy_hops(environ: Mapping[str, str]) -> int:
    """TRUSTED_PROXY_HOPS: the proxies in front of the service whose X-Forwarded-For/-Proto
    count (ProxyFix in the app, forwarded_allow_ips in backend/gunicorn_conf.py); 0 by default."""
    return positive_int(environ, "TRUSTED_PROXY_HOPS", 0, minimum=0)


def public_url(raw: str | None) -> str | None:
    """PUBLIC_URL, the address clients reach the service at (`https://audit.example.com`, or
    under a path prefix `https://example.com/audit`), without a trailing slash; None when unset.

    Every absolute URL the service writes (the OpenAPI document's `servers`, the links of `/`,
    `Link` headers) starts with it, whatever Host a request names."""
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as error:
        raise ConfigError(f"PUBLIC_URL is not a URL ({error}): {raw!r}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not raw.isprintable()
        or " " in raw
    ):
        raise ConfigError(f"PUBLIC_URL must be http:// or https:// and a host, not {raw!r}")
    if parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise ConfigError(f"PUBLIC_URL must have no query or fragment, not {raw!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"PUBLIC_URL must carry no user name or password, not {raw!r}")
    return raw.rstrip("/")


def default_origin(environ: Mapping[str, str]) -> str:
    """The log's origin when AUDIT_LOG_ORIGIN is unset: PUBLIC_URL without its scheme, else
    `localhost/audit-trail`."""
    url = public_url(environ.get("PUBLIC_URL"))
    return url.split("://", 1)[1] if url else "localhost/audit-trail"


def trusted_hosts(raw: str | None) -> list[str] | None:
    """TRUSTED_HOSTS: comma-separated host names (`.example.com` takes its subdomains too);
    None when unset, meaning any host."""
    if not raw or not raw.strip():
        return None
    hosts = [host.strip() for host in raw.split(",")]
    for host in hosts:
        if not host or "/" in host or " " in host:
            raise ConfigError(
                "TRUSTED_HOSTS must be host names separated by commas"
                f" (e.g. audit.example.com,localhost), not {raw!r}"
            )
    return hosts


def _login_security(environ: Mapping[str, str]) -> dict:
    """Brute-force protection (docs/login-security.md): thresholds well under NIST's 100."""
    values = {
        name: positive_int(environ, name, default)
        for name, default in (
            ("LOGIN_MAX_FAILURES", 5),  # per (account, address) pair
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", 20),  # per address, whatever the accounts
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", 20),  # per account, whatever the addresses
            ("LOGIN_WINDOW", 900),  # seconds without a failure after which failures are forgotten
            ("LOGIN_COOLOFF", 60),  # seconds of the first lockout; doubles for each further one
            ("LOGIN_COOLOFF_MAX", 3600),  # the longest lock; locks are forgotten after as long
            ("LOGIN_KNOWN_ADDRESS_TTL", 30 * 86400),
        )
    }
    if values["LOGIN_COOLOFF"] > values["LOGIN_COOLOFF_MAX"]:
        raise ConfigError("LOGIN_COOLOFF must not exceed LOGIN_COOLOFF_MAX")
    return values


def export_bounds(environ: Mapping[str, str], pool_size: int) -> dict:
    """Bounds on GET /v1/logs/export (backend/v1/export_guard.py), which holds one of a
    worker's pooled connections for as long as its client takes to read: exports at once per
    user and per worker (by default half the pool, so the other half stays for every other
    request), and the seconds a client may leave the server waiting before it is cut off."""
    per_worker = positive_int(environ, "EXPORTS_PER_WORKER", max(1, pool_size // 2))
    if pool_size > 1 and per_worker >= pool_size:
        raise ConfigError(
            f"EXPORTS_PER_WORKER must be less than DATABASE_POOL_SIZE ({pool_size}),"
            f" not {per_worker}: other requests need a connection while exports run"
        )
    return {
        "EXPORTS_PER_USER": positive_int(environ, "EXPORTS_PER_USER", 2),
        "EXPORTS_PER_WORKER": per_worker,
        "EXPORT_STALL_TIMEOUT": positive_int(environ, "EXPORT_STALL_TIMEOUT", 30),
    }


# Connections a container's workers may hold together by default: room under PostgreSQL's
# default max_connections (100) for maintenance, and for a second container.
CONNECTION_BUDGET = 80
CGROUP = Path("/sys/fs/cgroup")
# Seconds a request waits for a pooled connection while all are in use (long exports, say).
POOL_TIMEOUT = 10


def container_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its CPU set, capped by a cgroup quota (`docker --cpus`)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def _cgroup_quota(cgroup: Path) -> float | None:
    """The CPU quota in CPUs, from cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_*_us`); None: no limit."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def gunicorn_workers(environ: Mapping[str, str]) -> int:
    """GUNICORN_WORKERS, by default gunicorn's rule of thumb: 2 x CPUs + 1, counted from the
    container's CPUs, not the host's."""
    return positive_int(environ, "GUNICORN_WORKERS", 2 * container_cpus() + 1)


def database_pool_size(environ: Mapping[str, str]) -> int:
    """DATABASE_POOL_SIZE: the request connections each process keeps (a request waits for one
    while all are in use); by default 8, fewer when the gunicorn workers x (pool + 1 audit
    connection) would pass CONNECTION_BUDGET (13 workers, a 6-CPU container: 5), never fewer
    than 2.

    8 serves a gevent worker as well as 16 (figures: docs/benchmarks.md, "Tuning decisions")."""
    default = max(2, min(8, CONNECTION_BUDGET // gunicorn_workers(environ) - 1))
    return positive_int(environ, "DATABASE_POOL_SIZE", default)


def positive_int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    """The whole number in `environ[name]` (default when unset), at least `minimum`."""
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def positive_float(environ: Mapping[str, str], name: str, default: float, maximum=15.0) -> float:
    """The number of seconds in `environ[name]` (default when unset): above 0, at most
    `maximum` (a heartbeat of more than 15 s would break the stream's promise)."""
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= maximum:
        raise ConfigError(f"{name} must be above 0 and at most {maximum}, not {value}")
    return value


def _development_secret(instance_path: Path) -> str:
    """A random key kept in instance/, so every worker and every restart share it."""
    path = instance_path / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker won the race: use its key
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key
