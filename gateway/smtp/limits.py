"""Counting clients: open connections, messages per minute, failed logins.

All of it is in memory and per process (a restart forgets it, which is fine for limits measured
in minutes). Every table forgets keys that no longer count for anything, so a scan from a
million addresses costs memory only while it lasts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]
WINDOW = 60.0          # messages are counted per minute


class ConnectionCounter:
    """Open connections, overall and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.by_address: dict[str, int] = {}

    def try_open(self, address: str, max_total: int, max_per_address: int) -> str | None:
        """Count one more connection; or say why not (and count nothing)."""
        if self.total >= max_total:
            return "too many connections to this server"
        if self.by_address.get(address, 0) >= max_per_address:
            return "too many connections from your address"
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def close(self, address: str) -> None:
        self.total -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


class RateLimiter:
    """At most `limit` events per key in any minute (a sliding window of timestamps)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.events: dict[str, deque[float]] = {}
        self._since_sweep = 0

    def full(self, key: str, limit: int) -> bool:
        """Would one more event go over the limit? (0 means no limit.)"""
        if limit <= 0:
            return False
        return len(self._recent(key)) >= limit

    def take(self, key: str, limit: int) -> bool:
        """Count one event unless that goes over the limit; True when counted."""
        if limit <= 0:
            return True
        recent = self._recent(key)
        if len(recent) >= limit:
            return False
        recent.append(self.clock())
        self.events[key] = recent
        self._sweep()
        return True

    def _recent(self, key: str) -> deque[float]:
        recent = self.events.get(key) or deque()
        horizon = self.clock() - WINDOW
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            self.events.pop(key, None)
        return recent

    def _sweep(self) -> None:
        self._since_sweep += 1
        if self._since_sweep < 1000:
            return
        self._since_sweep = 0
        for key in list(self.events):
            self._recent(key)


class LoginFailures:
    """Failed AUTH attempts per client address, and the addresses blocked for too many."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, tuple[int, float]] = {}    # address -> (count, last failure)
        self.blocked: dict[str, float] = {}                 # address -> blocked until

    def is_blocked(self, address: str) -> bool:
        until = self.blocked.get(address)
        if until is None:
            return False
        if until <= self.clock():
            del self.blocked[address]
            return False
        return True

    def fail(self, address: str, max_failures: int, block_for: float) -> bool:
        """Count a failure; True when it blocks the address (and resets its count)."""
        now = self.clock()
        count, last = self.failures.get(address, (0, now))
        if now - last > block_for:
            count = 0          # old failures, long forgiven
        count += 1
        if count >= max_failures:
            self.failures.pop(address, None)
            self.blocked[address] = now + block_for
            self._forget_old(block_for)
            return True
        self.failures[address] = (count, now)
        self._forget_old(block_for)
        return False

    def succeed(self, address: str) -> None:
        self.failures.pop(address, None)

    def _forget_old(self, block_for: float) -> None:
        if len(self.failures) + len(self.blocked) < 1000:
            return
        now = self.clock()
        self.failures = {a: v for a, v in self.failures.items() if now - v[1] <= block_for}
        self.blocked = {a: until for a, until in self.blocked.items() if until > now}
