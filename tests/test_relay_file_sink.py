"""The file sink on its own: fsync'd appends, rotation by size, a torn last line cut off."""

import json

from backend.relay.file_sink import FileSink


def rows(*ids: int) -> list[tuple[int, str]]:
    return [(i, json.dumps({"id": i, "pad": "x" * 100})) for i in ids]


def ids_in(path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_batches_are_appended_one_row_a_line(tmp_path):
    path = tmp_path / "trail.ndjson"
    sink = FileSink(str(path), max_bytes=2**20, keep=2)

    sink.deliver(rows(1, 2))
    sink.deliver(rows(3))
    sink.close()

    assert ids_in(path) == [1, 2, 3]


def test_a_file_past_max_bytes_is_rotated_before_the_next_batch(tmp_path):
    path = tmp_path / "trail.ndjson"
    sink = FileSink(str(path), max_bytes=1024, keep=2)

    for start in range(1, 40, 3):
        sink.deliver(rows(start, start + 1, start + 2))
    sink.close()

    rotated = [tmp_path / "trail.ndjson.2", tmp_path / "trail.ndjson.1", path]
    assert not (tmp_path / "trail.ndjson.3").exists()
    assert all(p.stat().st_size <= 1024 for p in rotated)
    kept = [i for p in rotated for i in ids_in(p)]
    assert kept == list(range(kept[0], 40))


def test_a_torn_last_line_is_cut_before_the_batch_is_written_again(tmp_path):
    path = tmp_path / "trail.ndjson"
    path.write_text(rows(1)[0][1] + "\n" + '{"id": 2, "pa')

    sink = FileSink(str(path), max_bytes=2**20, keep=2)
    sink.deliver(rows(2, 3))
    sink.close()

    assert ids_in(path) == [1, 2, 3]
