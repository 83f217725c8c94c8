"""GET /v1/logs/export and `flask audit export`: the rows, both formats, every filter, the
visibility rule, streaming, and the same bytes from the command line as from the API."""

import csv
import io
import json
import math
from datetime import timedelta

import pytest
import sqlalchemy as sa

from backend.audit import export
from backend.audit.chain import GENESIS, row_hash
from backend.clock import rfc3339
from backend.extensions import db
from backend.models import Log
from tests.conftest import ADMIN, basic, postgresql_only
from tests.helpers import T, assert_error, write

FORMULAS = ('=HYPERLINK("http://x")', "+SUM(A1)", "-2+3", "@cmd", "\tTAB", "\rCR")
# Formulas a spreadsheet still runs: after what it skips (a line feed, a space, a no-break
# space, a zero-width space, a byte order mark), or written in full-width forms.
DISGUISED = (
    "\nLF",
    " =1+1",
    "\u00a0=1+1",
    "\u200b=1+1",
    "\ufeff=1+1",
    "\uff1d1+1",
    "\uff0bSUM(A1)",
    " \u3000\u200b@cmd",
)
# Not formulas: nothing to defuse, whatever the spaces or the full-width signs inside.
HARMLESS = (" plain", "\u00a0plain", "a\uff1db", "1-2", "\u200bword")
FILTERS = [
    {"user": "alice"},
    {"ip": "203.0.113.9"},
    {"level": "warning,ERROR"},
    {"source": "auth"},
    {"event": "login.failure"},
    {"q": "QUOTE"},
]


@pytest.fixture
def rows(api, users):
    """A trail with awkward text: quotes, commas, newlines, control characters, non-ASCII,
    would-be formulas, and rows of several users, sources, levels and addresses."""
    api.get("/v1/me", users["alice"], environ_base={"REMOTE_ADDR": "203.0.113.9"})
    api.client.post("/login", headers=basic("alice", "not-her-password"))
    write(api.app, user="alice", level="ERROR", track='a "quote", a comma, and\na newline')
    write(api.app, user="bob", track="tab\tbackslash\\ bell\x07 \x01\x02 ünïcode ☃ \u2028")
    write(api.app, source="main", level="DEBUG", track="Quote-free")
    write(api.app, user="dave", track="", user_agent="")  # empty text: an empty CSV cell
    for number, formula in enumerate(FORMULAS + DISGUISED):
        write(api.app, user=formula if number % 2 else "carol", track=formula)
    for text in HARMLESS:
        write(api.app, user=text, track=text)
    return users


def get_export(api, token, **params):
    return api.get("/v1/logs/export", token, query_string=params)


def expected(api, response, keep=lambda row: True) -> list[dict]:
    """The rows in the database that `keep` accepts, oldest first, as the export writes them,
    but for the row of the export's own request, written once it has answered."""
    own = response.headers["X-Request-ID"]
    return [
        {name: _exported(name, getattr(row, name)) for name in export.FIELDS}
        for row in api.rows()
        if keep(row) and row.request_id != own
    ]


def _exported(name, value):
    if name == "created_at":
        return rfc3339(value)
    return str(value) if name == "event_id" else value


def ndjson_rows(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    # bytes.splitlines: str's would also split at the U+2028 inside a JSON string.
    return [json.loads(line) for line in response.get_data().splitlines()]


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def as_csv_cells(row: dict, dialect: str) -> list[str]:
    return [cell_text(name, value, dialect) for name, value in row.items()]


def cell_text(name: str, value, dialect: str) -> str:
    if name == "details":
        return details_text(value, dialect)
    return "" if value is None else str(value)


def details_text(value, dialect: str) -> str:
    """`details` as the export writes it: compact JSON on SQLite (json() of the stored text);
    on PostgreSQL the text of jsonb, which orders keys by length, then bytes, and puts a space
    after each `:` and `,`."""
    if dialect == "sqlite":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        pairs = (
            f"{json.dumps(key, ensure_ascii=False)}: {details_text(value[key], dialect)}"
            for key in keys
        )
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(details_text(item, dialect) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def dialect_of(api) -> str:
    return (
        "sqlite" if api.app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite") else "postgresql"
    )


def ndjson_line(row: dict, dialect: str) -> str:
    """What the export writes for `row`: json.dumps(row, ensure_ascii=False, separators=(",",
    ":")), byte for byte, but for `details` (details_text)."""
    parts = [
        json.dumps(name)
        + ":"
        + (
            details_text(value, dialect)
            if name == "details"
            else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        )
        for name, value in row.items()
    ]
    return "{" + ",".join(parts) + "}\n"


def without_row(data: bytes, fmt: str, row_id: int) -> bytes:
    """An export's bytes without the line of row `row_id`."""
    start = f'{{"id":{row_id},' if fmt == "ndjson" else f"{row_id},"
    lines = data.splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(start.encode()))


def keep_for(params: dict):
    """The filter of `params`, in Python, as CONTRACT.md words it."""
    name, value = next(iter(params.items()))
    if name == "level":
        return lambda row: row.level in value.upper().split(",")
    if name == "q":
        return lambda row: value.lower() in row.track.lower()
    return lambda row: getattr(row, name) == value


# --- NDJSON ----------------------------------------------------------------------------------


def test_ndjson_is_every_row_oldest_first_with_the_contract_fields_and_the_chain(api, rows):
    response = get_export(api, rows["admin"])
    assert ndjson_rows(response) == expected(api, response)


def test_ndjson_lines_are_compact_json_byte_for_byte(api, rows):
    response = get_export(api, rows["admin"], format="ndjson")
    lines = [ndjson_line(row, dialect_of(api)) for row in expected(api, response)]
    assert response.get_data() == "".join(lines).encode()


def test_ndjson_rows_have_the_same_fields_as_the_api(api, rows):
    exported = ndjson_rows(get_export(api, rows["admin"]))
    listed = api.get("/v1/logs", rows["admin"], query_string={"order": "asc"}).get_json()
    # The listing also has the export's own request row, written after the export answered.
    assert [{k: row[k] for k in listed["items"][0]} for row in exported] == listed["items"][:-1]


def test_an_unfiltered_export_verifies_offline(api, rows):
    prev_hash = GENESIS
    exported = ndjson_rows(get_export(api, rows["admin"]))
    for row in exported:
        assert row["prev_hash"] == prev_hash
        assert row["hash"] == row_hash(row, prev_hash)
        prev_hash = row["hash"]
    assert len(exported) > 10


def test_timestamps_keep_their_microseconds(api):
    write(api.app, created_at=T)  # first: the writer never lets time run backwards
    write(api.app, created_at=T + timedelta(microseconds=7))
    api.create_user(*ADMIN, is_admin=True)
    created = [row["created_at"] for row in ndjson_rows(get_export(api, api.login(*ADMIN)))]
    assert created[:2] == ["2020-01-01T10:00:00.000000Z", "2020-01-01T10:00:00.000007Z"]


# --- CSV -------------------------------------------------------------------------------------


def test_csv_is_a_header_then_every_row_oldest_first(api, rows):
    response = get_export(api, rows["admin"], format="csv")
    assert response.status_code == 200
    header, *body = csv_rows(response.get_data())
    assert header == list(export.FIELDS)
    assert len(body) == len(expected(api, response))
    safe = [row for row in expected(api, response) if not _looks_like_formula(row)]
    assert [cells for cells in body if cells[0] in {str(row["id"]) for row in safe}] == [
        as_csv_cells(row, dialect_of(api)) for row in safe
    ]


def test_the_written_out_formula_pattern_is_what_the_unicode_tables_give():
    """FORMULA_PATTERN is kept in the code (built, it costs half a second in a request); a new
    Python's Unicode tables may change it: then write out what this builds."""
    assert export.FORMULA_PATTERN == export.unicode_formula_pattern()


def test_csv_starts_with_a_byte_order_mark_and_ends_lines_with_crlf(api, rows):
    data = get_export(api, rows["admin"], format="csv").get_data()
    assert data.startswith("\ufeffid,created_at,".encode())
    assert data.count(b"\r\n") == len(api.rows())  # a header, and every row but its own
    assert b'"a ""quote"", a comma, and\na newline"' in data


@pytest.mark.parametrize("formula", FORMULAS + DISGUISED)
def test_csv_cells_cannot_run_as_formulas(api, rows, formula):
    header, *body = csv_rows(get_export(api, rows["admin"], format="csv").get_data())
    [cells] = [cells for cells in body if cells[header.index("track")] == "'" + formula]
    # `rows` wrote the formula as the user of every other row, "carol" as the rest's.
    user = "'" + formula if (FORMULAS + DISGUISED).index(formula) % 2 else "carol"
    assert cells[header.index("user")] == user
    assert not any(cell.startswith(FORMULAS_START) for cell in cells)


# What a spreadsheet runs as a formula at the start of a cell, and what it skips before it.
FORMULAS_START = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\n",
    "\uff1d",
    "\uff0b",
    " ",
    "\u00a0",
    "\u200b",
    "\ufeff",
    "\u3000",
)


def test_csv_leaves_other_cells_alone(api, rows):
    header, *body = csv_rows(get_export(api, rows["admin"], format="csv").get_data())
    tracks = [cells[header.index("track")] for cells in body]
    assert "Quote-free" in tracks and "GET /v1/me -> 200" in tracks


@pytest.mark.parametrize("text", HARMLESS)
def test_csv_leaves_spaces_and_full_width_signs_alone_where_no_formula_follows(api, rows, text):
    header, *body = csv_rows(get_export(api, rows["admin"], format="csv").get_data())
    [cells] = [cells for cells in body if cells[header.index("user")] == text]
    assert cells[header.index("track")] == text


def _looks_like_formula(row: dict) -> bool:
    return any(
        isinstance(value, str) and export.looks_like_formula(value) for value in row.values()
    )


# --- filters and visibility ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("params", FILTERS, ids=lambda params: next(iter(params)))
def test_each_filter_selects_what_the_listing_selects(api, rows, fmt, params):
    response = get_export(api, rows["admin"], format=fmt, **params)
    assert response.status_code == 200
    ids = [row["id"] for row in expected(api, response, keep_for(params))]
    assert 0 < len(ids) < len(api.rows()) - 1
    if fmt == "ndjson":
        assert [row["id"] for row in ndjson_rows(response)] == ids
    else:
        assert [int(cells[0]) for cells in csv_rows(response.get_data())[1:]] == ids
    listing = api.get("/v1/logs", rows["admin"], query_string={"order": "asc", **params})
    assert [item["id"] for item in listing.get_json()["items"]][: len(ids)] == ids


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_since_and_until_bound_the_export(api, rows, fmt):
    middle = api.rows()[len(api.rows()) // 2]
    last = api.rows()[-1]
    params = {"since": rfc3339(middle.created_at), "until": rfc3339(last.created_at)}
    response = get_export(api, rows["admin"], format=fmt, **params)
    ids = [
        row["id"]
        for row in expected(
            api, response, lambda row: middle.created_at <= row.created_at < last.created_at
        )
    ]
    if fmt == "ndjson":
        assert [row["id"] for row in ndjson_rows(response)] == ids
    else:
        assert [int(cells[0]) for cells in csv_rows(response.get_data())[1:]] == ids
    assert ids and ids[0] == middle.id and last.id not in ids


def test_filters_combine(api, rows):
    response = get_export(api, rows["admin"], user="alice", level="error", q="comma")
    assert [row["id"] for row in ndjson_rows(response)] == [
        row["id"]
        for row in expected(
            api,
            response,
            lambda row: row.user == "alice" and row.level == "ERROR" and "comma" in row.track,
        )
    ]


def test_a_non_admin_exports_only_their_own_rows(api, rows):
    response = get_export(api, rows["alice"])
    assert ndjson_rows(response) == expected(api, response, lambda row: row.user == "alice")
    assert ndjson_rows(get_export(api, rows["alice"], user="bob")) == []


def test_an_empty_export_is_empty_or_only_the_header(api, users):
    assert get_export(api, users["admin"], user="nobody").get_data() == b""
    data = get_export(api, users["admin"], user="nobody", format="csv").get_data()
    assert csv_rows(data) == [list(export.FIELDS)]


# --- the response ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("ndjson", "application/x-ndjson"), ("csv", "text/csv; charset=utf-8")]
)
def test_the_response_names_its_media_type_and_a_file(api, users, fmt, media_type):
    response = get_export(api, users["admin"], format=fmt)
    assert response.content_type == media_type
    assert response.headers["Content-Disposition"] == f'attachment; filename="audit-log.{fmt}"'


def test_ndjson_is_the_default_format(api, rows):
    assert get_export(api, rows["admin"]).content_type == "application/x-ndjson"


def test_the_export_is_streamed_a_fetch_at_a_time(api, rows, monkeypatch):
    monkeypatch.setattr(export, "FETCH_ROWS", 3)
    response = api.client.get(
        "/v1/logs/export", headers={"Authorization": f"Bearer {rows['admin']}"}, buffered=False
    )
    assert response.is_streamed
    chunks = [chunk for chunk in response.response if chunk]
    response.close()
    assert len(chunks) == math.ceil(len(expected(api, response)) / 3) > 1
    assert [chunk.count(b"\n") for chunk in chunks[:-1]] == [3] * (len(chunks) - 1)
    assert sum(chunk.count(b"\n") for chunk in chunks) == len(expected(api, response))


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_client_that_leaves_mid_export_frees_its_connection(api, rows, monkeypatch, fmt):
    monkeypatch.setattr(export, "FETCH_ROWS", 2)
    response = api.client.get(
        "/v1/logs/export",
        query_string={"format": fmt},
        buffered=False,
        headers={"Authorization": f"Bearer {rows['admin']}"},
    )
    chunks = iter(response.response)
    assert next(chunk for chunk in chunks if chunk.count(b"\n") == 2)
    with api.app.app_context():
        engine = db.engine
    assert engine.pool.checkedout() == 1  # the export's, mid-COPY on PostgreSQL
    response.close()  # as the server does when the client goes away
    assert engine.pool.checkedout() == 0
    with engine.connect() as connection:  # back in the pool idle, not in a cancelled COPY
        assert connection.execute(sa.select(sa.func.count()).select_from(Log)).scalar() > 10
    assert len(ndjson_rows(get_export(api, rows["admin"]))) == len(api.rows()) - 1


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_progress_is_told_the_last_id_and_the_rows_of_each_chunk(api, rows, monkeypatch, fmt):
    monkeypatch.setattr(export, "FETCH_ROWS", 4)
    told = []
    with api.app.app_context():
        query = export.statement({}, None, db.engine.dialect.name, fmt)
        chunks = list(export.stream(db.engine, query, fmt, progress=lambda *at: told.append(at)))
    every_id = [row.id for row in api.rows()]
    assert len(chunks) == 1 + math.ceil(len(every_id) / 4)  # the header (or b""), then rows
    last_ids = every_id[3::4] + ([every_id[-1]] if len(every_id) % 4 else [])
    sizes = [4] * (len(last_ids) - 1) + [len(every_id) - 4 * (len(last_ids) - 1)]
    assert told == list(zip(last_ids, sizes, strict=True))


@postgresql_only
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_query_that_fails_on_its_first_row_is_an_error_not_an_empty_200(
    api, rows, monkeypatch, fmt
):
    """PostgreSQL starts a COPY before it runs the query; the first row is read before the
    response starts, so a failure there (a statement timeout, say) is still an error status."""
    statement = export.statement

    def failing(*args):
        query = statement(*args)
        return query.with_only_columns(*query.selected_columns, 1 / (Log.id - Log.id))

    monkeypatch.setattr(export, "statement", failing)
    response = get_export(api, rows["admin"], format=fmt)
    assert_error(response, 500)
    [row] = api.rows(event="request.exception")
    assert row.track.startswith("psycopg.errors.DivisionByZero: ")


def test_the_export_is_audited_like_any_v1_request(api, rows):
    response = get_export(api, rows["admin"], format="csv", user="alice")
    [row] = api.rows(request_id=response.headers["X-Request-ID"])
    assert (row.event, row.status, row.track) == (
        "api.request",
        200,
        "GET /v1/logs/export?format=csv&user=alice -> 200",
    )


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_without_a_valid_token_it_is_401(api, users, token):
    response = get_export(api, token)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"limit": "5"}, "limit"),
        ({"order": "asc"}, "order"),
        ({"level": ""}, "level"),
        ({"user": "a\x00b"}, "user"),
        ({"colour": "red"}, "colour"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ],
)
def test_a_bad_parameter_is_400_naming_it(api, users, params, field):
    assert_error(get_export(api, users["admin"], **params), 400, details={field})


# --- flask audit export ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize(
    "params",
    [{}, *FILTERS, {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00.5+02:00"}],
    ids=lambda params: next(iter(params), "all"),
)
def test_the_command_writes_the_bytes_the_api_gives_an_admin(api, rows, runner, fmt, params):
    options = [f"--{name}={value}" for name, value in params.items()]
    result = runner.invoke(args=["audit", "export", f"--format={fmt}", *options])
    assert result.exit_code == 0, result.output
    # After the command: the API's own request row comes after its answer; the command's own
    # `trail.export` row, written once it had written its rows, is in the API's export only.
    response = get_export(api, rows["admin"], format=fmt, **params)
    [own] = api.rows(event="trail.export", source="cli")
    assert result.stdout_bytes == without_row(response.get_data(), fmt, own.id)
    assert result.stderr_bytes == b""


def test_the_command_defaults_to_ndjson(api, rows, runner):
    result = runner.invoke(args=["audit", "export"])
    [own] = api.rows(event="trail.export", source="cli")
    data = get_export(api, rows["admin"], format="ndjson").get_data()
    assert result.stdout_bytes == without_row(data, "ndjson", own.id)


def test_the_command_names_a_bad_filter_and_exits_1(runner, users):
    result = runner.invoke(args=["audit", "export", "--level=loud", "--since=yesterday"])
    assert result.exit_code == 1
    assert "level:" in result.output and "since:" in result.output


def test_the_command_shows_progress_on_a_terminal_only(api, rows, runner, monkeypatch):
    from backend import cli

    monkeypatch.setattr(cli, "stderr_is_terminal", lambda: True)
    result = runner.invoke(args=["audit", "export"])
    assert result.exit_code == 0
    assert "exporting" in result.stderr
    [own] = api.rows(event="trail.export", source="cli")
    assert result.stdout_bytes == without_row(
        get_export(api, rows["admin"]).get_data(), "ndjson", own.id
    )


def test_csv_rows_are_what_the_csv_module_writes_byte_for_byte(api, rows):
    response = get_export(api, rows["admin"], format="csv")
    dialect = dialect_of(api)
    cells = [
        [
            details_text(value, dialect) if name == "details" else _defused(value)
            for name, value in row.items()
        ]
        for row in expected(api, response)
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([list(export.FIELDS), *cells])
    assert response.get_data() == ("\ufeff" + buffer.getvalue()).encode()


def _defused(value):
    if isinstance(value, str) and export.looks_like_formula(value):
        return "'" + value
    return value
