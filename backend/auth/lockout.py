"""Brute-force protection: django-axes' "lock by combination", plus an address and an account rule.

Every failed password check (a login, or the current password of a password change) counts
against three keys, each with its own threshold of consecutive failures:

- the (account, address) pair, LOGIN_MAX_FAILURES: the attacker's own line of attack;
- the address, LOGIN_MAX_FAILURES_PER_ADDRESS: one address spraying many accounts;
- the account, LOGIN_MAX_FAILURES_PER_ACCOUNT: many addresses on one account.

Reaching a threshold locks that key. Pair and address locks last LOGIN_COOLOFF, doubling with
each further lock of the same key up to LOGIN_COOLOFF_MAX. The account lock, which also shuts
the owner out, stays at LOGIN_COOLOFF and never escalates, and it does not apply at all from
an address the account logged in from within LOGIN_KNOWN_ADDRESS_TTL: an attacker elsewhere
cannot keep the owner out. A key forgets its failures once LOGIN_WINDOW passes with neither a
failure nor a lock, and its locks (the escalation) once LOGIN_COOLOFF_MAX does. A success
resets the pair and the account, never the address (an attacker's own account must not wash
a spraying address clean). Unknown names count like real ones, so a lock says nothing about
whether an account exists.
"""

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import TooManyRequests

from backend import metrics
from backend.clock import utcnow
from backend.extensions import db
from backend.models import LoginThrottle

logger = logging.getLogger(__name__)

THRESHOLDS = {
    "pair": "LOGIN_MAX_FAILURES",
    "address": "LOGIN_MAX_FAILURES_PER_ADDRESS",
    "account": "LOGIN_MAX_FAILURES_PER_ACCOUNT",
}
DESCRIPTIONS = {
    "pair": "this account from this address",
    "address": "this address",
    "account": "this account",
}
# Optimistic updates that lose a race are redone from a fresh read, this many times at most.
ATTEMPTS = 5
T = TypeVar("T")


class LockedOut(TooManyRequests):
    """429 with Retry-After: too many failed attempts for now."""

    description = "Too many failed attempts; try again later."


class Throttle:
    """The counters one password check touches: its pair, its address and its account."""

    def __init__(self, username: str, address: str | None):
        self.username = username
        self.address = address or ""
        self.keys = {
            "pair": throttle_key("pair", username, self.address),
            "address": throttle_key("address", self.address),
            "account": throttle_key("account", username),
        }

    def lock(self) -> tuple[int, list[str]] | None:
        """(seconds to wait, locked scopes) if an attempt may not be made now, else None."""
        now = utcnow()
        rows = self._rows()
        known_until = _known_until(rows.get("pair"))
        known = known_until is not None and now < known_until  # logged in from here lately
        locked = {
            scope: row.locked_until
            for scope, row in rows.items()
            if row.locked_until is not None
            and row.locked_until > now
            and not (scope == "account" and known)
        }
        if not locked:
            return None
        seconds = math.ceil((max(locked.values()) - now).total_seconds())
        return seconds, [DESCRIPTIONS[scope] for scope in locked]

    def record_failure(self) -> None:
        """Count a failed check against all three keys, locking those that reach a threshold."""
        now = utcnow()

        def fail() -> list[LoginThrottle]:
            # Expired rows are worth no more than missing ones: delete them as failures come
            # (rows another request holds are left for later, so two purges never deadlock).
            expired = (
                sa.select(LoginThrottle.id)
                .where(LoginThrottle.expires_at <= now)
                .with_for_update(skip_locked=True)
            )
            db.session.execute(sa.delete(LoginThrottle).where(LoginThrottle.id.in_(expired)))
            rows = self._rows(for_update=True)
            return [
                row
                for scope in self.keys
                if _add_failure(row := rows.get(scope) or self._new_row(scope, now), now)
            ]

        for row in self._update(fail):
            metrics.LOCKOUTS.labels(row.scope).inc()
            logger.warning(
                "lockout of %s for %d s: user %s from %s",
                DESCRIPTIONS[row.scope],
                (row.locked_until - now).total_seconds(),
                self.username,
                self.address,
            )

    def record_success(self) -> None:
        """The password was right: reset the pair (now a known address) and the account."""
        now = utcnow()

        def succeed() -> None:
            rows = self._rows(for_update=True)
            if "pair" not in rows:
                rows["pair"] = self._new_row("pair", now)
            rows["pair"].last_success_at = now
            for scope in ("pair", "account"):
                if scope in rows:
                    _reset(rows[scope], now)

        self._update(succeed)

    def _rows(self, for_update: bool = False) -> dict[str, LoginThrottle]:
        """The keys' rows as they are now; locked on PostgreSQL when about to be changed."""
        query = (
            sa.select(LoginThrottle)
            .where(LoginThrottle.key.in_(self.keys.values()))
            .execution_options(populate_existing=True)
        )
        if for_update:
            query = query.with_for_update()
        return {row.scope: row for row in db.session.scalars(query)}

    def _new_row(self, scope: str, now: datetime) -> LoginThrottle:
        row = LoginThrottle(
            scope=scope, key=self.keys[scope], failures=0, lockouts=0, expires_at=now
        )
        db.session.add(row)
        return row

    @staticmethod
    def _update(change: Callable[[], T]) -> T:
        """Run `change` on fresh rows and commit; redo it if another worker got there first."""
        for attempt in itertools.count(1):
            result = change()
            try:
                db.session.commit()
                return result
            except (StaleDataError, IntegrityError):
                db.session.rollback()
                if attempt == ATTEMPTS:
                    raise


def throttle_key(scope: str, *parts: str) -> str:
    """The row key of a scope's parts: a digest, so any attempted name fits."""
    return hashlib.sha256(json.dumps([scope, *parts]).encode()).hexdigest()


def _add_failure(row: LoginThrottle, now: datetime) -> bool:
    """Count one failure; True when it starts a lock."""
    quiet_since = _last_failure_or_lock(row)
    if quiet_since is not None:
        if now >= quiet_since + timedelta(seconds=current_app.config["LOGIN_WINDOW"]):
            row.failures = 0
        if now >= quiet_since + _lock_memory():
            row.lockouts = 0
    row.failures += 1
    row.last_failure_at = now
    started = row.failures >= current_app.config[THRESHOLDS[row.scope]]
    if started:
        row.lockouts += 1
        row.failures = 0
        row.locked_until = now + timedelta(seconds=_cooloff(row.scope, row.lockouts))
    row.expires_at = _expiry(row)
    return started


def _cooloff(scope: str, lockouts: int) -> int:
    """LOGIN_COOLOFF, doubled for each lock after the first (never for an account)."""
    base, ceiling = current_app.config["LOGIN_COOLOFF"], current_app.config["LOGIN_COOLOFF_MAX"]
    if scope == "account":
        return base
    return min(base * 2 ** min(lockouts - 1, 32), ceiling)


def _reset(row: LoginThrottle, now: datetime) -> None:
    row.failures = row.lockouts = 0
    row.last_failure_at = row.locked_until = None
    row.expires_at = _expiry(row) or now


def _last_failure_or_lock(row: LoginThrottle) -> datetime | None:
    """Failures count until LOGIN_WINDOW passes after this, the number of locks (so the
    escalation) until _lock_memory() does."""
    if row.last_failure_at is None:
        return None
    return max(row.last_failure_at, row.locked_until or row.last_failure_at)


def _lock_memory() -> timedelta:
    """How long a key remembers its locks: at least the longest lock, so that waiting one out
    instead of guessing on buys no shorter one."""
    config = current_app.config
    return timedelta(seconds=max(config["LOGIN_WINDOW"], config["LOGIN_COOLOFF_MAX"]))


def _known_until(row: LoginThrottle | None) -> datetime | None:
    if row is None or row.last_success_at is None:
        return None
    return row.last_success_at + timedelta(seconds=current_app.config["LOGIN_KNOWN_ADDRESS_TTL"])


def _expiry(row: LoginThrottle) -> datetime | None:
    """When the row stops mattering: its locks are forgotten and its address is not known."""
    quiet_since = _last_failure_or_lock(row)
    locks_forgotten = None if quiet_since is None else quiet_since + _lock_memory()
    return max((m for m in (locks_forgotten, _known_until(row)) if m is not None), default=None)
