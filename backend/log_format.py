"""One record, one line: the application log cannot be forged through what clients send.

A user name, a user agent or a path can hold CR, LF, other control characters or ANSI escape
sequences. Written as they are, they would start a fake record on a new line or rewrite an
operator's terminal. The formatter writes each such character as a Python escape (`\\n`,
`\\x1b`, `\\u2028`), tracebacks included, so every record is exactly one line.
"""

import logging
import re

from flask import Flask
from flask.logging import default_handler

FORMAT = "[%(asctime)s] %(levelname)s in %(module)s: %(message)s"
# C0 controls (LF, CR, ESC...), DEL, C1 controls (NEL, CSI...) and Unicode's line separators.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every control character escaped, so it prints as one line."""
    return UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


class OneLineFormatter(logging.Formatter):
    """A Formatter whose output never spans more than one line."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def init_app(app: Flask) -> None:
    """Format the app's log (Flask's default handler, which `backend.*` loggers reach) safely."""
    default_handler.setFormatter(OneLineFormatter(FORMAT))
    app.logger  # noqa: B018  (creates the logger, attaching the handler unless one is configured)
