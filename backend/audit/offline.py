"""The auditor's verifier: an NDJSON export, the public keys, the signed tree heads, and no
database, no secret, no app settings.

    python -m backend.audit.offline --file trail.ndjson --keys keys.json \\
        [--heads trail.ndjson.heads] [--checkpoint saved-checkpoint.txt]

(also `flask audit verify --file ...`). It checks, row by row in id order: no id missing, each
`prev_hash` the hash of the row before, each `hash` recomputed from the row's content
(chain.row_hash, whatever chain version wrote it); it grows the Merkle tree of RFC 9162 over
the rows, and checks the root at each signed head's size against that head. Every head must
be signed by a listed key; two validly signed heads of one size with different roots are a
split view. With `--checkpoint`, the trail must extend that saved head. Exit 0 intact, 1 with
the first broken row named.

The heads come from `--heads`, else from `EXPORT.heads` beside the export when it exists
(`flask audit heads > trail.ndjson.heads`). The export is read as a stream: any length, in
constant memory.
"""

import argparse
import base64
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from backend.audit import merkle, notes
from backend.audit.chain import GENESIS, row_hash


class Broken(Exception):
    """The first thing wrong: `row` (0 when no row is to blame) and why."""

    def __init__(self, row: int, problem: str):
        super().__init__(f"BROKEN at row {row}: {problem}")
        self.row = row


@dataclass
class Heads:
    """The signed heads the rows are checked against: {tree size: root hash}."""

    roots: dict[int, str] = field(default_factory=dict)

    def add(self, checkpoint: notes.Checkpoint, where: str) -> None:
        known = self.roots.setdefault(checkpoint.tree_size, checkpoint.root_hash)
        if known != checkpoint.root_hash:
            raise Broken(
                checkpoint.tree_size,
                f"split view: two validly signed tree heads of size {checkpoint.tree_size}"
                f" disagree (root {known[:16]}... and, in {where}, {checkpoint.root_hash[:16]}...)",
            )


def read_keys(text: str) -> list[notes.VerifierKey]:
    """The keys of a KEYS.json (GET /v1/logs/keys, or `flask audit keys`)."""
    return [
        notes.VerifierKey(key["name"], base64.b64decode(key["public_key"]))
        for key in json.loads(text)["keys"]
        if key.get("algorithm", "Ed25519") == "Ed25519"
    ]


def open_head(note: str, keys: list[notes.VerifierKey], where: str) -> notes.Checkpoint:
    """A signed head's checkpoint; Broken when no listed key signed it."""
    try:
        return notes.open_checkpoint(note, keys)
    except notes.BadNote as error:
        size = note.split("\n")[1] if note.count("\n") > 1 else "?"
        raise Broken(
            int(size) if size.isdigit() else 0,
            f"the tree head of size {size} in {where} is not valid: {error}"
            " (forged, or signed with a key that is not listed)",
        ) from None


@dataclass
class Start:
    """Where the rows start: after row `purged` (0: at row 1), following `last_hash`, on the
    tree of the purged rows (`frontier`: its stored hashes, `flask audit heads` prints them
    after a purge). Not trusted: a signed head beyond `purged` proves it, or the verdict says
    no head did."""

    purged: int = 0
    last_hash: str = GENESIS
    frontier: list[bytes] = field(default_factory=list)

    @classmethod
    def from_line(cls, line: dict) -> "Start":
        """The start that a heads file's purge line describes."""
        return cls(line["purged"], line["last_hash"], [bytes.fromhex(h) for h in line["frontier"]])


def verify_rows(rows: Iterable[dict], heads: Heads, start: Start | None = None) -> int:
    """Walk the rows; return the tree's size at the end. Broken names the first one that
    breaks a promise."""
    start = start or Start()
    frontier, size, prev_hash = list(start.frontier), start.purged, start.last_hash
    if size and heads.roots.get(size, merkle.root(frontier)) != merkle.root(frontier):
        raise Broken(
            size, f"the purged rows' tree hashes do not hash to the signed tree head of size {size}"
        )
    for row in rows:
        expected = size + 1
        if row["id"] != expected:
            problem = "missing: the row was removed" if row["id"] > expected else "out of order"
            raise Broken(expected, f"{problem} (the next row in the export is {row['id']})")
        if row["prev_hash"] != prev_hash:
            raise Broken(
                expected, "does not follow the row before it: rows were removed or reordered"
            )
        if row_hash(row, row["prev_hash"]) != row["hash"]:
            raise Broken(expected, "altered: its hash does not match its content")
        prev_hash = row["hash"]
        size, _ = merkle.append(frontier, size, [merkle.leaf_hash(row["hash"])])
        signed = heads.roots.get(size)
        if signed is not None and signed != merkle.root(frontier):
            raise Broken(
                size,
                f"the rows up to here do not hash to the signed tree head of size {size}:"
                " the trail was rewritten",
            )
    return size


def verify_export(
    lines: Iterable[str],
    keys: list[notes.VerifierKey],
    head_notes: Iterable[tuple[str, str]],
    saved: str | None = None,
    start: Start | None = None,
) -> str:
    """Check an export; return the verdict line for an intact one, raise Broken otherwise.
    `head_notes`: (signed note, where it came from)."""
    heads = Heads()
    rows = (json.loads(line) for line in lines if line.strip())
    for note, where in head_notes:
        heads.add(open_head(note, keys, where), where)
    saved_head = open_head(saved, keys, "the saved checkpoint") if saved else None
    if saved_head:
        heads.add(saved_head, "the saved checkpoint")
    start = start or Start()
    size = verify_rows(rows, heads, start)
    if saved_head and saved_head.tree_size < start.purged:
        raise Broken(
            start.purged,
            f"the saved checkpoint of size {saved_head.tree_size} is older than the purge of"
            f" rows 1-{start.purged}: check it against a consistency proof instead",
        )
    if saved_head and saved_head.tree_size > size:
        raise Broken(
            size + 1,
            f"missing: the saved checkpoint covers {saved_head.tree_size} rows, the export"
            f" ends at row {size}: the trail was truncated",
        )
    checked = sorted(s for s in heads.roots if start.purged <= s <= size)
    after = f" after the purge of rows 1-{start.purged}" if start.purged else ""
    return (
        f"intact: {size - start.purged} rows{after},"
        f" {len(checked)} signed tree head{'s' if len(checked) != 1 else ''}"
        f" matched{f' (the largest of size {checked[-1]})' if checked else ''}"
        + (f", extends the saved checkpoint of size {saved_head.tree_size}" if saved_head else "")
    )


def heads_beside(export: Path, heads: Path | None) -> tuple[list[tuple[str, str]], Start]:
    """The signed notes of the heads file (NDJSON of tree heads, as `flask audit heads`
    writes), `--heads` or the one beside the export; and where the rows start (its purge
    line, if any)."""
    path = heads or export.with_name(export.name + ".heads")
    if not path.exists():
        return [], Start()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    notes_found = [(line["checkpoint"], path.name) for line in lines if "checkpoint" in line]
    purges = [Start.from_line(line) for line in lines if "purged" in line]
    return notes_found, purges[-1] if purges else Start()


def run(export: Path, keys: Path, heads: Path | None = None, checkpoint: Path | None = None):
    """The verdict line and the exit code (0 intact, 1 broken)."""
    try:
        head_notes, start = heads_beside(export, heads)
        with export.open(encoding="utf-8") as lines:
            verdict = verify_export(
                lines,
                read_keys(keys.read_text()),
                head_notes,
                checkpoint.read_text() if checkpoint else None,
                start,
            )
    except Broken as broken:
        return str(broken), 1
    return verdict, 0


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.audit.offline`: the same check as `flask audit verify --file`."""
    parser = argparse.ArgumentParser(prog="python -m backend.audit.offline", description=__doc__)
    parser.add_argument("--file", required=True, type=Path, help="an NDJSON export")
    parser.add_argument("--keys", required=True, type=Path, help="GET /v1/logs/keys, saved")
    parser.add_argument("--heads", type=Path, help="signed tree heads (flask audit heads)")
    parser.add_argument("--checkpoint", type=Path, help="a signed checkpoint saved earlier")
    options = parser.parse_args(argv)
    line, code = run(options.file, options.keys, options.heads, options.checkpoint)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
