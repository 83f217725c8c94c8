"""backend.concurrency in a gevent worker: a password hash, the long loops (verify, export) and
a wait for the spool's lock leave the worker's other requests free to run.

Each check runs in a Python process that gevent has patched, as gunicorn's gevent worker is,
with a greenlet that counts its turns meanwhile: a call that holds the one thread gives it
none. The same calls made without the cooperation (the hash and the lock on the loop, the
loops without `pause`) are measured too, and give it none, so the counts show what the
cooperation does.
"""

import json
import shutil
import subprocess
import sys

import config

SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import fcntl
import json
import sys
from pathlib import Path

import gevent
import psycopg.waiting

import config
from backend import create_app, security
from backend.audit import chain, export, spool, verification
from backend.audit.events import AuditEvent
from backend.concurrency import in_greenlets
from backend.extensions import db
from tests.hashing import CountingHasher

turns = 0


def counter():
    global turns
    while True:
        gevent.sleep(0.001)  # a request that waits, as on a socket: not one that spins
        turns += 1


def turns_during(function, *args):
    gevent.sleep(0)  # the counter is running
    before = turns
    function(*args)
    return turns - before


def verify():
    with verification.snapshot(db.engine) as connection:
        assert verification.verify(connection, key).intact


def export_all():
    query = export.statement({}, None, "sqlite", "ndjson")
    assert b"".join(export.stream(db.engine, query, "ndjson")).count(b"\n") == ROWS


def without(module, name, replacement, function):
    def run():
        original = getattr(module, name)
        setattr(module, name, replacement)
        try:
            function()
        finally:
            setattr(module, name, original)
    return run


def hashes_at_once():
    # Six logins at once: how many hashes run together at the most.
    real = security._hasher
    security._hasher = counting = CountingHasher(real, monkey.get_original("_thread",
                                                                           "allocate_lock")())
    try:
        gevent.joinall([gevent.spawn(security.check_password, None, "guess") for _ in range(6)])
    finally:
        security._hasher = real
    return counting.peak


def on_the_loop(function, *args):
    return function(*args)


def without_pause(module, function):
    return without(module, "pause", lambda: None, function)


def append_to_a_held_spool():
    # Another holder of the spool's lock (a thread here, another worker replaying the spool in
    # production) lets go after 0.2 s; the append waits for it.
    path = Path(instance) / "spool.jsonl"
    holder = open(path, "ab")
    fcntl.flock(holder, fcntl.LOCK_EX)
    real_sleep = monkey.get_original("time", "sleep")
    gevent.get_hub().threadpool.spawn(lambda: (real_sleep(0.2), holder.close()))
    spool.Spool(path).append(AuditEvent(source="v1", event="api.request", level="INFO",
                                        track="spooled"))


ROWS = 5000
database, instance = sys.argv[1:]
app = create_app(config.settings({"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{database}",
                                  "SECRET_KEY": "concurrency-test", "INSTANCE_PATH": instance}))
key = app.config["AUDIT_SIGNING_KEY"].encode()
gevent.spawn(counter)
with app.app_context():
    with db.engine.begin() as connection:
        chain.append(connection, [AuditEvent(source="v1", event="api.request", level="INFO",
                                             track=f"row {n}") for n in range(ROWS)], key)
    print(json.dumps({
        "in greenlets": in_greenlets(),
        "psycopg waits with": psycopg.waiting.wait.__name__,
        "hash_password": turns_during(security.hash_password, "a password"),
        "check_password": turns_during(security.check_password, None, "a password"),
        "hashes at once": hashes_at_once(),
        "verify": turns_during(verify),
        "export": turns_during(export_all),
        "spool append": turns_during(append_to_a_held_spool),
        # The same without the cooperation.
        "hash on the loop": turns_during(security._hasher.hash, "a password"),
        "verify without pause": turns_during(without_pause(verification, verify)),
        "export without pause": turns_during(without_pause(export, export_all)),
        "spool append on the loop": turns_during(without(spool, "_waiting", on_the_loop,
                                                         append_to_a_held_spool)),
    }))
"""


def test_hashes_verify_and_export_leave_a_gevent_workers_other_greenlets_running(
    sqlite_template, tmp_path
):
    database = tmp_path / "audit.db"
    shutil.copy(sqlite_template, database)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(database), str(tmp_path)],
        cwd=config.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, "")  # nothing printed: no traceback either
    turns = json.loads(done.stdout)
    assert turns["in greenlets"] is True
    # psycopg's C wait would hold the thread while PostgreSQL answers; it chose at import.
    assert turns["psycopg waits with"] != "wait_c"
    # Off the loop, the counter runs for as long as the hash takes; on it, never.
    assert turns["hash_password"] > 0 and turns["check_password"] > 0
    assert turns["hash on the loop"] == 0
    assert turns["hashes at once"] == 2  # 19 MiB each: a worker's memory stays bounded
    # 5,000 rows: verify pauses every 1,000, the export after each chunk of 2,000 (3 chunks),
    # each pause milliseconds after the last: the counter's turn has come by then.
    assert turns["verify"] >= 3 and turns["export"] >= 2
    assert turns["verify without pause"] == 0 and turns["export without pause"] == 0
    # Waiting for the spool's lock, which another process holds while it replays the spool.
    assert turns["spool append"] > 0 and turns["spool append on the loop"] == 0


def test_outside_gevent_nothing_is_patched_and_the_calls_are_plain():
    script = (
        "from backend import concurrency, security\n"
        "print(concurrency.in_greenlets(), concurrency.OffTheLoop(1)(max, 1, 2),"
        " security.check_password(security.hash_password('pw'), 'pw'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=config.ROOT, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "False 2 True\n"), done.stderr
