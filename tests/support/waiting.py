"""Bounded waits on the reactor, for conditions no event announces."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

TIMEOUT = 10.0


async def _wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> Deferred[None]:
    """Poll ``predicate`` on the reactor (every 10 ms) until it holds; fail after ``timeout`` seconds."""
    return Deferred.fromCoroutine(_wait_until(predicate, what, timeout))
