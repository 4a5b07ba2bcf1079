"""Bounded waits on the reactor, for conditions no event announces."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

TIMEOUT = 10.0


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float, every: float) -> None:
    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, every, lambda: None)


def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT,
               every: float = 0.05) -> Deferred[None]:
    """Like ``wait_until`` for a check that must wait on something itself (a Redis read): await ``check()``
    every ``every`` seconds until it is true; fail after ``timeout`` seconds."""
    return Deferred.fromCoroutine(_eventually(check, what, timeout, every))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> Deferred[None]:
    """Poll ``predicate`` on the reactor (every 10 ms) until it holds; fail after ``timeout`` seconds."""
    async def check() -> bool:
        return predicate()

    return eventually(check, what, timeout, every=0.01)
