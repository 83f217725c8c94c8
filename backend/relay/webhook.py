"""The `webhook` sink: a POST of a JSON array of rows, signed as GitHub and Stripe sign theirs.

`X-Audit-Timestamp: <unix seconds>` and `X-Audit-Signature: sha256=<hex HMAC-SHA-256 of
"<timestamp>.<body>" under the sink's secret>`: the receiver recomputes it, and refuses an old
timestamp to stop replays. A 2xx answer is delivered; anything else, or no answer within the
timeout, is a failure that the relay retries (requests keeps the connection alive between
batches).
"""

import hashlib
import hmac
import time

import requests

from backend.relay.sinks import SinkError


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Audit-Signature of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class WebhookSink:
    """POSTs each batch to `url`."""

    def __init__(self, url: str, secret: str, timeout: float):
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._session: requests.Session | None = None

    fields = ()

    def deliver(self, rows: list[tuple]) -> None:
        """POST the batch; SinkError unless the answer is a 2xx."""
        body = ("[" + ",".join([row[1] for row in rows]) + "]").encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Audit-Timestamp": timestamp,
            "X-Audit-Signature": signature(self.secret, timestamp, body),
        }
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # no proxy from the environment sees the trail
        try:
            answer = self._session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as error:
            self.close()
            raise SinkError(f"{self.url}: {type(error).__name__}: {error}") from error
        if not 200 <= answer.status_code < 300:
            raise SinkError(f"{self.url}: answered {answer.status_code}")

    def close(self) -> None:
        """Close the kept-alive connections."""
        if self._session is not None:
            self._session.close()
            self._session = None
