"""`flask audit tail [-f] [filters]`: the newest rows, then (with -f) each new one as it comes."""

import json
import selectors
import subprocess

import config
from tests.helpers import flask_audit, write
from tests.serving import BIN, server_environment


def test_tail_prints_the_newest_rows_as_the_export_does(app, runner):
    ids = [write(app, track=f"r{n}") for n in range(5)]

    result = flask_audit(runner, "tail", "-n", "2")

    exported = flask_audit(runner, "export").stdout.splitlines()
    assert result.exit_code == 0
    assert result.stdout.splitlines() == exported[-2:]
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ids[-2:]


def test_tail_filters_like_export(app, runner):
    write(app, level="INFO")
    warning = write(app, level="WARNING")
    write(app, level="INFO")

    result = flask_audit(runner, "tail", "--level", "WARNING")

    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [warning]


def test_tail_with_a_bad_filter_exits_1_naming_it(runner):
    result = flask_audit(runner, "tail", "--level", "LOUD")

    assert result.exit_code == 1
    assert "level" in result.output


def read_line(process: subprocess.Popen, timeout: float = 30.0) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "no line from flask audit tail -f"
    return process.stdout.readline().decode()


def test_tail_follow_prints_each_new_row_as_it_is_committed(app, database_url, tmp_path):
    old = write(app, track="old")
    environment = server_environment(database_url, tmp_path)
    process = subprocess.Popen(
        [BIN / "flask", "audit", "tail", "-f", "-n", "1", "--poll", "0.05"],
        cwd=config.ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,  # no read-ahead past a line: select() must see what is left unread
    )
    try:
        first = json.loads(read_line(process))
        new = [write(app, track=f"new {n}") for n in range(2)]
        following = [json.loads(read_line(process)) for _ in new]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()

    assert first["id"] == old
    assert [row["id"] for row in following] == new
