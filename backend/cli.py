"""Command-line tools: `flask users ...` and `flask audit ...`."""

import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from time import sleep

import click
import psycopg
import sqlalchemy as sa
from flask import current_app
from marshmallow import ValidationError

from backend import database_state
from backend.accounts import (
    UsernameTaken,
    create_user,
    creation_changes,
    ensure_admin,
    user_target,
)
from backend.audit import anchors, export, offline, refusals, retention, segments, verification
from backend.audit import follow as following
from backend.audit.reads import reading_engine
from backend.audit.subscribers import event_from_signal
from backend.audit.writer import write, writer
from backend.clock import rfc3339
from backend.database_state import DatabaseCommands
from backend.errors import flat
from backend.extensions import db
from backend.models import Log, User
from backend.relay.command import relay_command
from backend.roles import owner_engine
from backend.schemas import LogFiltersSchema, NewUserSchema, RFC3339DateTime
from backend.security import check_password
from backend.signals import Target

users = DatabaseCommands("users", help="Manage the users who can log in.")
audit = DatabaseCommands("audit", help="Check, export, relay and prune the audit trail.")
audit.add_command(relay_command)
TRAIL = Target("trail")


def record_cli(event: str, *, track: str, level: str = "INFO", **structured) -> None:
    """A row of the trail (source `cli`) for what a command did or read, naming the OS account
    and host that ran it (in `track` and `details`). `structured`: announce()'s `outcome`,
    `target`, `changes`, `reason`, `details`."""
    operator = retention.operator()
    os_user, _, host = operator.rpartition("@")
    details = {**structured.pop("details", {}), "os_user": os_user, "host": host}
    write(
        event_from_signal(
            "cli",
            event=event,
            level=level,
            track=f"{track} (by {operator})",
            details=details,
            **structured,
        )
    )


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create(name: str, admin: bool, password_stdin: bool) -> None:
    """Create the user NAME; prompts twice for the password unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    fields = valid_new_user(name, password, admin)
    try:
        user = create_user(fields["username"], fields["password"], fields["is_admin"])
    except UsernameTaken as taken:
        record_cli(
            "user.create",
            track=f"user {name!r} not created: the name is taken",
            level="WARNING",
            outcome="failure",
            reason="username_taken",
            target=user_target(name=name),
        )
        raise click.ClickException(str(taken)) from None
    announce_created(user)
    click.echo(f"created {'admin' if user.is_admin else 'user'} {user.username}")


def announce_created(user) -> None:
    record_cli(
        "user.create",
        track=f"created {'admin' if user.is_admin else 'user'} {user.username}",
        target=user_target(user),
        changes=creation_changes(user),
    )


def valid_new_user(name: str, password: str, admin: bool) -> dict:
    """The user's fields checked by the API's own schema; exit with the bad fields named."""
    try:
        return NewUserSchema().load({"username": name, "password": password, "is_admin": admin})
    except ValidationError as error:
        raise click.ClickException(field_problems(error)) from None


def field_problems(error: ValidationError) -> str:
    """`password: Length must be between 8 and 1024.; ...`: each bad field and its messages."""
    return "; ".join(
        f"{field}: {' '.join(flat(messages))}"
        for field, messages in error.normalized_messages().items()
    )


@users.command("ensure-admin")
def ensure_admin_command() -> None:
    """Create the admin from ADMIN_USERNAME/ADMIN_PASSWORD if absent (or `admin` on an empty db)."""
    username, password = current_app.config["ADMIN_USERNAME"], current_app.config["ADMIN_PASSWORD"]
    if username and password:
        valid_new_user(username, password, True)
    user, generated = ensure_admin(username, password)
    if user is None and username and password and not admin_password_applies(username, password):
        # A changed ADMIN_PASSWORD never replaces a password: say so, and how to.
        click.echo(
            f"admin {username} exists: ADMIN_PASSWORD was not applied"
            f" (to change the password: flask users set-password {username})"
        )
    if user is None:
        record_cli("cli.users.ensure-admin", track="an admin exists: nothing to do")
        return
    announce_created(user)
    if generated is None:
        click.echo(f"created admin {user.username}")
        return
    # Standard output is the service's log stream (`make run`, `docker logs`), which others
    # read and ship: the password goes to a file only its owner can read, and to the screen
    # only when a person is looking at one.
    path = keep_private(Path(current_app.instance_path) / GENERATED_PASSWORD_FILE, generated)
    if sys.stdout.isatty():
        click.echo(
            f"created admin {user.username} with password {generated} (shown once here;"
            f" also in {path}, readable by its owner only)"
        )
    else:
        click.echo(
            f"created admin {user.username}; its password is in {path} (readable by its owner only)"
        )


def admin_password_applies(username: str, password: str) -> bool:
    """Whether the existing user `username`'s password is `password`."""
    user = db.session.scalar(sa.select(User).where(User.username == username))
    return user is not None and check_password(user.password_hash, password)


GENERATED_PASSWORD_FILE = "initial-admin-password"


def keep_private(path: Path, text: str) -> Path:
    """Write `text` to `path`, readable and writable by its owner only (0600), replacing what
    was there; never through a symbolic link. Return the absolute path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # a file left from before keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    return path.resolve()


# The end of an intact verdict's line when --tree checked the stored tree too.
TREE_TOO = "the tree's stored hashes and tiles too"


@audit.command("verify")
@click.option(
    "--anchor",
    "anchor_file",
    type=click.File("r"),
    help="An anchor file from `flask audit anchor -o`, kept outside the database.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option(
    "--file",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this NDJSON export offline instead: no database, no secret.",
)
@click.option(
    "--keys",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --file: the public keys (GET /v1/logs/keys, or flask audit keys), saved.",
)
@click.option(
    "--heads",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --file: the signed tree heads (flask audit heads); default EXPORT.heads.",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --file: a signed checkpoint saved earlier, which the trail must extend.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=segments.default_workers,
    show_default="one a core",
    help="Processes that check segments of the trail (and with --tree, pieces of the tree) at"
    " once (PostgreSQL).",
)
@click.option(
    "--tree",
    "tree_stored",
    is_flag=True,
    help="Also check every stored hash and tile of the Merkle tree, which proofs are made of"
    " (on a large trail, 1.3-1.6 times as long).",
)
def verify_command(
    anchor_file, as_json: bool, export_file, keys, heads, checkpoint, workers: int, tree_stored
) -> None:
    """Check the whole trail's hash chain and signatures; exit 1 naming the first broken row.

    With --file and --keys, check an export offline (backend/audit/offline.py)."""
    if export_file or keys or heads or checkpoint:
        if not (export_file and keys):
            raise click.UsageError("offline verification needs both --file and --keys")
        if tree_stored:
            raise click.UsageError("--tree checks the database's stored tree, not an export")
        line, code = offline.run(export_file, keys, heads, checkpoint)
        click.echo(line)
        sys.exit(code)
    kept = anchors.read_anchors(anchor_file) if anchor_file else []
    with verification.snapshot(db.engine) as connection:
        total = verification.row_count(connection)
        if tree_stored:  # its leaves after the rows
            total += verification.tree_size(connection)
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            verdict = verification.verify(
                connection,
                writer().key,
                kept,
                progress=bar.update,
                checkpoint_every=writer().checkpoint_every,
                own_key=writer().signer.public,
                workers=workers,
                tree_stored=tree_stored,
            )
    if as_json:
        click.echo(json.dumps(verdict.as_dict() | ({"tree": True} if tree_stored else {})))
    else:
        too = f"; {TREE_TOO}" if tree_stored and verdict.intact else ""
        click.echo(verification.describe(verdict) + too)
    if caveat := verification.caveat(verdict):
        click.echo(caveat, err=True)
    try:  # after the verdict: a trail broken enough may refuse even this row
        record_cli(
            "cli.audit.verify",
            track=f"verified the trail: {verification.describe(verdict)}",
            level="INFO" if verdict.intact else "CRITICAL",
            target=TRAIL,
            details={
                "filters": {
                    "anchor": anchor_file.name if anchor_file else None,
                    "tree": tree_stored,
                },
                "intact": verdict.intact,
                "rows": verdict.rows,
                "broken_row": verdict.broken_row,
            },
        )
    except Exception as error:  # noqa: BLE001  (the verdict stands whatever the writer says)
        click.echo(f"note: this run could not be recorded in the trail: {error!r}", err=True)
    sys.exit(0 if verdict.intact else 1)


@audit.command("anchor")
@click.option(
    "--output",
    "-o",
    type=click.File("w"),
    help="Also write every HMAC checkpoint here, one JSON line each (for verify --anchor).",
)
def anchor_command(output) -> None:
    """Sign the trail's head now and print its signed checkpoint (a C2SP signed note).

    Keep what it prints away from the database: `flask audit verify --file EXPORT --keys KEYS
    --checkpoint SAVED` later proves the trail extends it. With -o, the HMAC checkpoints too:
    `flask audit verify --anchor FILE` then detects a chain recomputed by someone who could
    write the database.
    """
    writer().list_key()
    with writer().engine.begin() as connection:
        checkpoint = anchors.anchor(connection, writer().key)
        head = anchors.sign_tree_head(connection, writer().signer)
    if output:
        with writer().engine.connect() as connection:
            output.writelines(anchors.checkpoints_file(connection))
    signed = checkpoint["log_id"] if checkpoint else None
    record_cli(
        "cli.audit.anchor",
        track=f"signed row {signed}" if signed else "the head was signed already",
        target=TRAIL,
        details={"signed_row": signed},
    )
    if head:
        click.echo(head["checkpoint"], nl=False)
    if checkpoint:
        click.echo(f"signed row {checkpoint['log_id']}", err=True)


@audit.command("purge")
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    help="Delete rows created before this date (YYYY-MM-DD: its midnight UTC) or RFC 3339 time.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=retention.PURGE_BATCH,
    show_default=True,
    help="Rows deleted per transaction.",
)
def purge_command(before: str, dry_run: bool, yes: bool, batch: int) -> None:
    """Retention: delete rows older than DATE, leaving what remains verifiable.

    Refused, deleting nothing, for a date in the future or within AUDIT_MIN_RETENTION_DAYS, and
    while any legal hold stands. Every attempt is recorded before a row is deleted.
    """
    try:
        cutoff = _moment(before)
    except click.BadParameter as error:
        track = f"purge refused: --before {before!r} is not a date"
        _record_purge(track, "WARNING", "failure", "invalid_date")
        raise click.ClickException(
            f"purge refused, nothing deleted: --before {before!r} is not a date: {error.message}"
        ) from None
    asked = f"purge of the rows created before {rfc3339(cutoff)}"
    with owner_engine().connect() as connection:
        refused = retention.refusal(
            connection, cutoff, current_app.config["AUDIT_MIN_RETENTION_DAYS"]
        )
        plan = None if refused else retention.plan(connection, cutoff)
    if refused:
        _record_purge(f"{asked} refused: {refused}", "WARNING", "denied", "refused")
        raise click.ClickException(f"purge refused, nothing deleted: {refused}")
    if not plan.rows:
        _record_purge(f"{asked}: nothing to delete", "INFO")
        click.echo(f"no rows created before {rfc3339(cutoff)}")
        return
    if dry_run:
        _record_purge(f"{asked}: dry run, would delete {plan.describe()}", "INFO")
        click.echo(f"would purge {plan.describe()}; nothing deleted (dry run)")
        return
    if not yes and not click.confirm(f"Delete {plan.describe()}?"):
        track = f"{asked}: declined at the prompt, nothing deleted"
        _record_purge(track, "INFO", "failure", "declined")
        raise click.Abort()
    # Recorded before the first row goes, so even an interrupted purge is on the record (its
    # signed purge checkpoints show how far it got; running it again finishes it).
    _record_purge(f"{asked}: deleting {plan.describe()}", "WARNING")
    deleted = 0
    with click.progressbar(length=plan.rows, label="purging", file=sys.stderr) as bar:
        while (taken := _purge_step(plan, batch, deleted)) is not None:
            deleted += taken
            bar.update(taken)
    click.echo(f"purged {deleted} rows (up to row {plan.last_id})")


def _purge_step(plan: retention.PurgePlan, batch: int, deleted: int) -> int | None:
    """One transaction of the purge (a month's partition or a batch of rows); a legal hold
    placed meanwhile stops it (the trigger, or the check under the holds' lock)."""
    try:
        with owner_engine().begin() as connection:
            return retention.purge_step(connection, writer().key, plan, batch)
    except (sa.exc.DBAPIError, retention.HoldError) as error:
        reason = refusals.reason(error)  # the driver's message, not the SQL and its parameters
        track = f"purge stopped after {deleted} rows: {reason}"
        _record_purge(track, "WARNING", "error", "stopped")
        raise click.ClickException(f"purge stopped after {deleted} rows: {reason}") from None


def _record_purge(track: str, level: str, outcome: str = "success", reason: str | None = None):
    record_cli(
        "trail.purge", track=track, level=level, outcome=outcome, reason=reason, target=TRAIL
    )


@audit.group("hold")
def hold() -> None:
    """Legal holds: while any stands, nothing of the trail is purged."""


@hold.command("add")
@click.argument("name")
@click.option("--reason", required=True, help="Why: the case, request or ticket it serves.")
def hold_add(name: str, reason: str) -> None:
    """Place the legal hold NAME."""
    with _holding("hold.add", name) as connection:
        retention.place_hold(connection, name, reason)
    record_cli(
        "hold.add",
        track=f"legal hold {name.strip()!r} placed: {reason.strip()}",
        level="WARNING",
        target=Target("hold", None, name.strip()),
        changes={"standing": [False, True]},
        details={"hold_reason": reason.strip()},
    )
    click.echo(f"legal hold {name.strip()!r} placed: nothing will be purged while it stands")


@hold.command("release")
@click.argument("name")
def hold_release(name: str) -> None:
    """Release the legal hold NAME."""
    with _holding("hold.release", name) as connection:
        retention.release_hold(connection, name)
    record_cli(
        "hold.release",
        track=f"legal hold {name!r} released",
        level="WARNING",
        target=Target("hold", None, name),
        changes={"standing": [True, False]},
    )
    click.echo(f"legal hold {name!r} released")


@hold.command("list")
@click.option("--all", "everything", is_flag=True, help="Released holds too.")
def hold_list(everything: bool) -> None:
    """The standing legal holds (with --all, the released ones too)."""
    with owner_engine().connect() as connection:
        holds = (retention.all_holds if everything else retention.standing_holds)(connection)
    record_cli(
        "cli.audit.hold.list",
        track=f"listed {len(holds)} legal hold{'' if len(holds) == 1 else 's'}",
        target=TRAIL,
        details={"filters": {"all": everything}},
    )
    if not holds:
        click.echo("no legal hold has been placed" if everything else "no legal hold is standing")
    for entry in holds:
        line = f"{entry.name}: placed {rfc3339(entry.placed_at)} by {entry.placed_by}"
        if entry.released_at:
            line += f", released {rfc3339(entry.released_at)} by {entry.released_by}"
        click.echo(f"{line}; reason: {entry.reason}")


@contextmanager
def _holding(event: str, name: str):
    """A transaction for a hold command; its HoldError is recorded (a `failure`) and becomes a
    one-line error, exit 1."""
    try:
        with owner_engine().begin() as connection:
            yield connection
    except retention.HoldError as error:
        record_cli(
            event,
            track=f"legal hold {name.strip()!r} refused: {error}",
            level="WARNING",
            outcome="failure",
            reason="invalid_hold",
            target=Target("hold", None, name.strip()[:255]),
        )
        raise click.ClickException(str(error)) from None


@audit.command("replay")
def replay_command() -> None:
    """Write the events waiting in the local spool to the database, in order, exactly once.

    An event the database refuses for its content is set aside (and recorded as
    `audit.rejected`); the rest are written, and the command says which it set aside."""
    try:
        replay = writer().replay()
    except (sa.exc.DBAPIError, psycopg.Error) as error:  # psycopg's: PostgreSQL's appends
        # The database's message, not the SQL and its parameters.
        raise click.ClickException(
            f"the database did not take the spooled events, which stay in the spool:"
            f" {database_state.problem(current_app, error) or refusals.reason(error)}"
        ) from None
    record_cli(
        "cli.audit.replay",
        track=f"replayed {replay.replayed} spooled events, set aside {len(replay.set_aside)}",
        target=TRAIL,
        details={"replayed": replay.replayed, "set_aside": len(replay.set_aside)},
    )
    click.echo(f"replayed {replay.replayed} events")
    if replay.set_aside:
        click.echo(
            f"set aside {len(replay.set_aside)} events the database refused, kept in"
            f" {writer().spool.rejected_path}:"
        )
        for event, why in replay.set_aside:
            click.echo(f"  {event.event_id} ({event.source}/{event.event}): {why}")


def _moment(text: str) -> datetime:
    """A moment in the forms the API takes (schemas.RFC3339DateTime): RFC 3339 or a date."""
    try:
        return RFC3339DateTime().deserialize(text)
    except ValidationError as error:
        raise click.BadParameter(" ".join(error.messages), param_hint="--before") from None


FILTER_OPTIONS = (
    click.option("--user", help="Exact user name."),
    click.option("--ip", help="Exact client address."),
    click.option("--level", help="One or more levels, comma separated, e.g. WARNING,ERROR."),
    click.option("--source", help="auth, v1, main, app, cli or system."),
    click.option("--event", help="Exact event name, e.g. login.failure."),
    click.option("--since", help="RFC 3339 time or YYYY-MM-DD (midnight UTC), inclusive."),
    click.option("--until", help="RFC 3339 time or YYYY-MM-DD (midnight UTC), exclusive."),
    click.option("--q", help="Case-insensitive substring of track."),
    click.option("--target", help="Exact name of what was acted on, e.g. a username."),
    click.option("--target-type", help="Exact kind of target: user, token, trail..."),
    click.option(
        "--outcome", help="One or more of success, failure, denied, error, comma separated."
    ),
)


def filter_options(command):
    """The filters of GET /v1/logs as options of `command` (export, tail)."""
    for option in reversed(FILTER_OPTIONS):
        command = option(command)
    return command


def valid_filters(filters: dict) -> dict:
    """The options' filters checked by the API's own schema; exit 1 naming a bad one."""
    try:
        return LogFiltersSchema().load({k: v for k, v in filters.items() if v is not None})
    except ValidationError as error:
        raise click.ClickException(field_problems(error)) from None


@audit.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(export.MEDIA_TYPES)),
    default="ndjson",
    show_default=True,
    help="One JSON object per line, CSV, or OCSF events (one JSON object per line).",
)
@filter_options
def export_command(fmt: str, **filters) -> None:
    """Write every matching row to standard output, oldest first: the bytes that
    GET /v1/logs/export gives an admin. A progress bar goes to standard error on a terminal."""
    args = valid_filters(filters)
    engine = reading_engine()
    query = export.statement(args, None, engine.dialect.name, fmt)
    output = sys.stdout.buffer
    sent = {"rows": 0, "next": 0}  # rows written, and those of the chunk being written

    def counted(last_id: int, rows: int) -> None:
        if progress is not None:
            progress(last_id, rows)
        sent["next"] = rows

    complete = False
    with _id_progress(engine, "exporting") as progress:
        try:
            for chunk in export.stream(engine, query, fmt, progress=counted):
                output.write(chunk)
                sent["rows"] += sent["next"]
            output.flush()
            complete = True
        except BrokenPipeError:  # `flask audit export | head`: the reader has had enough
            sys.stderr.close()
        finally:
            _record_export(args, fmt, sent["rows"], complete)
    if not complete:
        sys.exit(1)


def _record_export(filters: dict, fmt: str, rows: int, complete: bool) -> None:
    """`trail.export` (source cli): the rows written and the filters, when the stream ends."""
    filters = {k: rfc3339(v) if isinstance(v, datetime) else v for k, v in filters.items()}
    record_cli(
        "trail.export",
        track=f"exported {rows} rows as {fmt}" + ("" if complete else "; the reader left early"),
        outcome="success" if complete else "failure",
        reason=None if complete else "reader_left",
        target=TRAIL,
        details={"filters": filters, "format": fmt, "rows": rows},
    )


@contextmanager
def _id_progress(engine, label: str):
    """A `progress(last_id, rows)` that moves a bar across the trail's ids on a terminal's standard
    error, and does nothing elsewhere (ids are in order, so their span measures the work
    without counting rows)."""
    if not stderr_is_terminal():
        yield None
        return
    with engine.connect() as connection:
        first, last = connection.execute(sa.select(sa.func.min(Log.id), sa.func.max(Log.id))).one()
    done = (first or 1) - 1
    with click.progressbar(length=max((last or 0) - done, 1), label=label, file=sys.stderr) as bar:

        def progress(last_id: int, rows: int) -> None:
            nonlocal done
            bar.update(last_id - done)
            done = last_id

        yield progress


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@audit.command("tail")
@click.option("-f", "--follow", "keep_following", is_flag=True, help="Then print new rows.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="How many of the newest rows to print first.",
)
@click.option(
    "--poll",
    type=click.FloatRange(0.05, 60),
    default=0.5,
    show_default=True,
    help="Seconds between looks for new rows, with -f.",
)
@filter_options
def tail_command(keep_following: bool, lines: int, poll: float, **filters) -> None:
    """Print the newest matching rows, one JSON object a line (the export's); with -f, then
    every new row as it is committed, until interrupted."""
    args = valid_filters(filters)
    engine = db.engine
    rows = following.last_rows(engine, args, lines)
    _echo_rows(rows)
    if not keep_following:
        return
    if rows:
        after_id = rows[-1][0]
    else:
        with engine.connect() as connection:
            after_id = following.newest_id(connection)
    try:
        while True:
            rows = following.rows_after(engine, args, None, after_id, FOLLOW_BATCH)
            _echo_rows(rows)
            if rows:
                after_id = rows[-1][0]
            if len(rows) < FOLLOW_BATCH:
                sleep(poll)
    except KeyboardInterrupt:
        pass


FOLLOW_BATCH = 1000


def _echo_rows(rows: list[tuple[int, str]]) -> None:
    if rows:
        sys.stdout.write("".join(line + "\n" for _, line in rows))
        sys.stdout.flush()  # a pipe's reader sees each row as it comes
