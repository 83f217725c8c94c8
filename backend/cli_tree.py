"""`flask audit keys` and `flask audit heads`: what an auditor saves to check the trail
offline (`flask audit verify --file EXPORT --keys KEYS.json`)."""

import json

import click

from backend.audit import signing
from backend.audit.writer import writer
from backend.cli import audit
from backend.extensions import db


@audit.command("keys")
def keys_command() -> None:
    """Print the public keys of the signed tree heads as JSON: the auditor's KEYS.json
    (the same document as GET /v1/logs/keys)."""
    writer().list_key()
    with db.engine.connect() as connection:
        click.echo(json.dumps({"keys": signing.listed_keys(connection)}, indent=2))


@audit.command("heads")
def heads_command() -> None:
    """Print every signed tree head, one JSON line each, oldest first: the file to keep
    beside an export (EXPORT.heads) for `flask audit verify --file EXPORT`."""
    with db.engine.connect() as connection:
        for head in signing.all_heads(connection):
            click.echo(json.dumps(head))
