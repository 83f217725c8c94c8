"""Reading Server-Sent Events in tests: from the Flask test client's streamed response, or
from a served one over HTTP, each event as a dict of its fields (comments under `comment`)."""

import json


def parse_events(text: str) -> list[dict]:
    """The events of a complete chunk of an event stream (blocks separated by a blank line)."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            event.setdefault(field or "comment", value)
        events.append(event)
    return events


class EventReader:
    """Events of a streamed response, read as they come (`chunks` yields str or bytes)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.buffer = ""

    def next_events(self, count: int, kind: str = "log") -> list[dict]:
        """The next `count` events of `kind` (other events and comments are skipped)."""
        found: list[dict] = []
        while len(found) < count:
            while "\n\n" not in self.buffer:
                chunk = next(self.chunks)
                self.buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
            block, _, self.buffer = self.buffer.partition("\n\n")
            found += [e for e in parse_events(block + "\n\n") if e.get("event") == kind]
        return found

    def next_comment(self) -> str:
        """The next comment line's text."""
        while True:
            while "\n\n" not in self.buffer:
                chunk = next(self.chunks)
                self.buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
            block, _, self.buffer = self.buffer.partition("\n\n")
            if block.startswith(":"):
                return block.split("\n")[0][1:].strip()


def rows_of(events: list[dict]) -> list[dict]:
    return [json.loads(event["data"]) for event in events]
