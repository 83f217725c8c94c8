"""The sinks file (AUDIT_SINKS_FILE): TOML, one `[[sink]]` table a sink, read with tomllib.

Every key is checked here, before anything is delivered: a bad file stops the relay with one
line naming the sink and the key. An unknown key is refused too (a misspelt `levles` would
otherwise send every level to a SIEM that asked for a few).
"""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from backend.models import LEVELS, OUTCOMES, SOURCES, Log

KINDS = ("syslog", "webhook", "file")
# A filter key of a sink and the row's field it selects on.
FILTERS = {"levels": "level", "sources": "source", "events": "event", "outcomes": "outcome"}
COMMON = {"name", "kind", "batch_size", *FILTERS}
KIND_KEYS = {
    "syslog": {"address", "tls", "ca_file", "server_name", "facility", "timeout"},
    "webhook": {"url", "secret", "timeout"},
    "file": {"path", "max_bytes", "keep"},
}
REQUIRED = {"syslog": ("address",), "webhook": ("url", "secret"), "file": ("path",)}
BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000


class SinksFileError(ValueError):
    """The sinks file cannot be used; the message is one line, naming the sink and the key."""


@dataclass(frozen=True)
class SinkConfig:
    """One sink of the file: its name, kind, filters and the kind's own settings."""

    name: str
    kind: str
    batch_size: int = BATCH_SIZE
    # Row field -> the values a row must have one of, for the filters the sink sets.
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def load_sinks(path: str | Path) -> list[SinkConfig]:
    """The sinks of the TOML file at `path`, checked; SinksFileError names what is wrong."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SinksFileError(f"{path}: cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise SinksFileError(f"{path}: not TOML ({error})") from None
    tables = document.get("sink", [])
    if set(document) - {"sink"} or not isinstance(tables, list):
        raise SinksFileError(f"{path}: only [[sink]] tables are allowed")
    sinks = [_sink(table, index, path) for index, table in enumerate(tables)]
    names = [sink.name for sink in sinks]
    for name in names:
        if names.count(name) > 1:
            raise SinksFileError(f'{path}: sink "{name}": key "name": used twice')
    return sinks


def _sink(table: dict, index: int, path) -> SinkConfig:
    name = table.get("name")
    label = f'sink "{name}"' if isinstance(name, str) and name else f"sink #{index + 1}"

    def bad(key: str, problem: str) -> SinksFileError:
        return SinksFileError(f'{path}: {label}: key "{key}": {problem}')

    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise bad("name", "a text of 1 to 64 characters is required")
    kind = table.get("kind")
    if kind not in KINDS:
        raise bad("kind", f"must be one of {', '.join(KINDS)}")
    for key in table:
        if key not in COMMON | KIND_KEYS[kind]:
            raise bad(key, f"unknown for a {kind} sink")
    for key in REQUIRED[kind]:
        if key not in table:
            raise bad(key, "is required")
    filters = {}
    for key, column in FILTERS.items():
        if key in table:
            filters[column] = _filter_values(table[key], key, column, bad)
    batch_size = _integer(table, "batch_size", BATCH_SIZE, 1, MAX_BATCH_SIZE, bad)
    settings = SETTINGS[kind](table, bad)
    return SinkConfig(name, kind, batch_size, filters, settings)


def _filter_values(values, key: str, column: str, bad) -> tuple[str, ...]:
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise bad(key, "must be a non-empty list of texts")
    if column not in Log.__table__.columns:
        raise bad(key, f"this trail has no `{column}` field yet")
    allowed = {"level": LEVELS, "source": SOURCES, "outcome": OUTCOMES}.get(column)
    if allowed and set(values) - set(allowed):
        raise bad(key, f"{key} are {', '.join(allowed)}")
    return tuple(values)


def _integer(table: dict, key: str, default: int, low: int, high: int, bad) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(key, f"must be a whole number from {low} to {high}")
    return value


def _seconds(table: dict, bad) -> float:
    value = table.get("timeout", 10)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 300:
        raise bad("timeout", "must be a number of seconds above 0, at most 300")
    return float(value)


def _syslog(table: dict, bad) -> dict:
    host, _, port = str(table["address"]).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad("address", 'must be "host:port"')
    tls = table.get("tls", False)
    if not isinstance(tls, bool):
        raise bad("tls", "must be true or false")
    ca_file = table.get("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise bad("ca_file", f"no such file: {ca_file}")
    server_name = table.get("server_name", host.strip("[]"))
    if not isinstance(server_name, str):
        raise bad("server_name", "must be a text")
    return {
        "host": host.strip("[]"),
        "port": int(port),
        "tls": tls,
        "ca_file": ca_file,
        "server_name": server_name,
        # 13: "log audit" (RFC 5424, table 1).
        "facility": _integer(table, "facility", 13, 0, 23, bad),
        "timeout": _seconds(table, bad),
    }


def _webhook(table: dict, bad) -> dict:
    url = table["url"]
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad("url", "must be an http:// or https:// URL")
    secret = table["secret"]
    if not isinstance(secret, str) or not secret:
        raise bad("secret", "must be a non-empty text")
    return {"url": url, "secret": secret, "timeout": _seconds(table, bad)}


def _file(table: dict, bad) -> dict:
    path = table["path"]
    if not isinstance(path, str) or not path:
        raise bad("path", "must be a file path")
    return {
        "path": path,
        "max_bytes": _integer(table, "max_bytes", 100 * 2**20, 1024, 2**40, bad),
        "keep": _integer(table, "keep", 5, 1, 1000, bad),
    }


SETTINGS = {"syslog": _syslog, "webhook": _webhook, "file": _file}
