"""Every route and every command that the README and docs/ name exists: a reader who copies one
gets the thing it says (issue "A newcomer's first hour", item 1)."""

import re
from pathlib import Path

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

import config
from backend import create_app

PAGES = [config.ROOT / "README.md", *sorted((config.ROOT / "docs").glob("*.md"))]
# `GET /v1/logs/<id>`, `POST /login`, `PATCH /v1/users/{user_id}`: a method, then a path.
ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9_./<>{}:-]*)")
# `flask users set-password NAME`, `flask audit hold add`: the words after `flask`.
COMMAND = re.compile(r"\bflask ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)*)")
NOT_COMMANDS = {"audit trail", "audit-trail"}  # "Flask audit trail", the project's name


def named(pattern: re.Pattern) -> dict[str, set]:
    """What each page names, by page."""
    return {
        page.relative_to(config.ROOT).as_posix(): set(pattern.findall(page.read_text()))
        for page in PAGES
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    directory = tmp_path_factory.mktemp("docs-names")
    return create_app(
        config.settings(
            {
                "APP_ENV": "testing",
                "DATABASE_URL": f"sqlite:///{directory / 'a.db'}",
                "INSTANCE_PATH": str(directory),
                "SECRET_KEY": "docs-names",
            }
        )
    )


def concrete(path: str) -> str:
    """A path as a client would send it: placeholders (`<id>`, `{log_id}`) as a number."""
    path = re.sub(r"<[^>]*>|\{[^}]*\}", "1", path).rstrip(".:")
    return path.split("?")[0] or "/"


def test_every_route_the_docs_name_is_served(app):
    adapter = app.url_map.bind("localhost")
    missing = []
    for page, routes in named(ROUTE).items():
        for method, path in routes:
            try:
                adapter.match(concrete(path), method=method)
            except (NotFound, MethodNotAllowed):
                missing.append(f"{page}: {method} {path}")
    assert missing == []
    assert sum(len(routes) for routes in named(ROUTE).values()) > 30


def resolves(group, words: list[str]) -> bool:
    """Whether `flask WORDS...` names a command: each word a subcommand of the group before it,
    until a command that is not a group (the words after it are its arguments)."""
    for word in words:
        if not hasattr(group, "commands"):
            return True  # the arguments of a command
        if word not in group.commands:
            return False
        group = group.commands[word]
    return True


def test_every_command_the_docs_name_exists(app):
    missing = [
        f"{page}: flask {words}"
        for page, names in named(COMMAND).items()
        for words in names - NOT_COMMANDS
        if not resolves(app.cli, words.split())
    ]
    assert missing == []
    assert sum(len(names) for names in named(COMMAND).values()) > 20
    assert not resolves(app.cli, ["audit", "no-such-command"])


def test_the_readme_is_under_15000_characters():
    assert len(Path(config.ROOT / "README.md").read_text()) < 15_000
