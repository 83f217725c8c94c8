"""A private PostgreSQL cluster for the tests that stop, restart or break the database.

`initdb` in a temporary directory, served on a free port of 127.0.0.1 and on a Unix socket in
the same directory, so restarting it disturbs no one else's database (other test runs use the
machine's own cluster meanwhile). PostgreSQL refuses to run as root: under root the server and
its tools run as the `postgres` OS user (`runuser`), which then owns the directory.

    with private_cluster() as cluster:
        url = cluster.create_database("audit", "audit", "secret")
        cluster.restart()

Every command has a deadline, and leaving the block stops the server (SIGKILL if it will not
stop) and removes the directory.

A hot standby of such a cluster, made as an operator makes one (`pg_basebackup -R`, streaming
replication over the primary's private socket), on a port of its own:

    with private_cluster() as primary, standby_of(primary) as standby:
        standby.pause_replay()  # the standby lags from here on
"""

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.serving import free_port

PG_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
COMMAND_TIMEOUT = 60.0  # initdb on a slow disk; a pg_ctl wait is bounded by its own -t
START_TIMEOUT = 30  # seconds, pg_ctl -t


def find_bindir(root: Path = PG_ROOT) -> Path | None:
    """The bin/ directory of the highest PostgreSQL version installed, or None."""
    found = [
        bindir
        for bindir in root.glob("*/bin")
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()
    ]
    return max(found, key=lambda bindir: _version_key(bindir.parent.name), default=None)


def _version_key(name: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def require_bindir() -> Path:
    """find_bindir(), or skip the test saying why (fail it under CI: it may not be skipped)."""
    bindir = find_bindir()
    if bindir is None:
        reason = (
            f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/*/bin:"
            " install postgresql to run the database fault tests"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the database fault tests: {reason}")
        pytest.skip(reason)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.fail(
                f"running as root, but there is no {SERVER_USER!r} OS user to run"
                " PostgreSQL as (it refuses to run as root)"
            )
    return bindir


class ClusterError(RuntimeError):
    """A command on the cluster failed; the message has its output."""


class PrivateCluster:
    """One cluster in `directory`: data/, sockets/ and the server's log."""

    def __init__(self, bindir: Path, directory: Path):
        self.bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        self.log = directory / "postgresql.log"
        self.port = free_port()
        self.host = "127.0.0.1"

    # --- running its tools --------------------------------------------------------------
    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def run(self, tool: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run one of the cluster's tools as the server's user; its output, or ClusterError."""
        # Output to a file, not a pipe: `pg_ctl start` leaves a server running that must not
        # hold our pipe open.
        with tempfile.TemporaryFile() as output:
            try:
                completed = subprocess.run(
                    self._command(tool, *args),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    cwd=self.directory,
                )
            except subprocess.TimeoutExpired:
                output.seek(0)
                raise ClusterError(
                    f"{tool} {' '.join(args)}: no answer within {timeout} s\n"
                    f"{output.read().decode(errors='replace')}"
                ) from None
            output.seek(0)
            text = output.read().decode(errors="replace")
        if completed.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} exited with {completed.returncode}:\n"
                f"{text}\n--- server log ---\n{self.server_log()}"
            )
        return text

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(none)"

    # --- its life -------------------------------------------------------------------------
    def _make_directories(self) -> None:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            server = pwd.getpwnam(SERVER_USER)
            for path in (self.directory, self.sockets):
                os.chown(path, server.pw_uid, server.pw_gid)

    def init(self) -> None:
        """initdb, listening only on 127.0.0.1:port and on a socket in sockets/."""
        self._make_directories()
        # Trust on the private socket (the tests' own superuser connection), passwords on TCP.
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        self._configure()

    def init_standby(self, primary: "PrivateCluster") -> None:
        """A copy of `primary` by `pg_basebackup -R` (which writes standby.signal and the
        primary's address), made to listen on its own port and socket: a hot standby that
        streams the primary's WAL once started. (initdb's pg_hba.conf lets the superuser
        replicate over the local socket.)"""
        self._make_directories()
        self.run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            str(primary.sockets),
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-R",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        self._configure()

    def _configure(self) -> None:
        # Appended last, so these win over the primary's own lines that a standby's copy holds.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        # The server's user owns postgresql.conf; appending as root keeps its owner.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pgcluster.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "start",
            timeout=START_TIMEOUT + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` rolls back open transactions and cuts every connection."""
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            str(START_TIMEOUT),
            "stop",
            timeout=START_TIMEOUT + 10,
        )

    def restart(self, mode: str = "fast") -> None:
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-m",
            mode,
            "-w",
            "-t",
            str(START_TIMEOUT),
            "restart",
            timeout=START_TIMEOUT + 10,
        )

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server whatever it takes, then remove the directory."""
        try:
            if self.postmaster_pid() is not None:
                self.stop("immediate")
        except ClusterError:
            pass
        pid = self.postmaster_pid()
        if pid is not None:  # it would not stop: kill it; its backends exit when it dies
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- what is in it --------------------------------------------------------------------
    def superuser_dsn(self, database: str = "postgres") -> str:
        """A libpq connection string over the private socket, as the cluster's superuser."""
        return f"host={self.sockets} port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A role `owner` with `password` and its database `name`; returns its URL (TCP)."""
        with psycopg.connect(self.superuser_dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(owner), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
        return f"postgresql://{owner}:{password}@{self.host}:{self.port}/{name}"

    def execute(self, statement: str, database: str = "postgres"):
        """Run one statement as the cluster's superuser; its first row's first value (or None)."""
        with psycopg.connect(
            self.superuser_dsn(database), autocommit=True, connect_timeout=10
        ) as conn:
            cursor = conn.execute(statement)
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]

    # --- as a hot standby -----------------------------------------------------------------
    def pause_replay(self) -> None:
        """Stop applying the primary's WAL (it still arrives): the standby lags from now on."""
        self.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while self.execute("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise ClusterError("the standby's replay would not pause")
            time.sleep(0.05)

    def resume_replay(self) -> None:
        self.execute("SELECT pg_wal_replay_resume()")

    def catch_up(self, primary: "PrivateCluster") -> None:
        """Wait until this standby has replayed everything `primary` has written so far."""
        target = primary.execute("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while not self.execute(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
            if time.monotonic() > deadline:
                raise ClusterError(f"the standby did not replay up to {target}")
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster (skipped, or failed under CI, without PostgreSQL's binaries);
    stopped and removed when the block ends."""
    with _started(require_bindir(), PrivateCluster.init) as cluster:
        yield cluster


@contextmanager
def standby_of(primary: PrivateCluster) -> Iterator[PrivateCluster]:
    """A started hot standby of `primary`, streaming from it; stopped and removed when the
    block ends."""
    with _started(primary.bindir, lambda cluster: cluster.init_standby(primary)) as standby:
        yield standby


@contextmanager
def _started(bindir: Path, init) -> Iterator[PrivateCluster]:
    # Not under pytest's tmp_path: a Unix socket's path must stay short (~100 bytes), and the
    # server's user must be able to reach the directory.
    directory = Path(tempfile.mkdtemp(prefix="audit-pg-"))
    cluster = PrivateCluster(bindir, directory)
    try:
        init(cluster)
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
