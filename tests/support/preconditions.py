"""What the suite needs before its first test, checked once (tests/conftest.py calls ``ensure_redis`` after
collection when a selected test is not a unit test), and Ctrl-C while the reactor runs (``interrupt_the_tests``).

- ``redis-server`` on the PATH: the restart tests start private servers (tests/support/redis_server.py).
- The shared Redis, ``WSGW_TEST_REDIS`` (default 127.0.0.1:6379): when nothing answers PING there, a private
  redis-server is started for the run and ``WSGW_TEST_REDIS`` pointed at it.

A missing precondition is one line (``Missing``): what is missing and how to get it, never a hang.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import greenlet
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.support.redis_server import SHARED_VARIABLE, RedisServer, answers, redis_server_binary, shared_address

INSTALL_HINT = "apt install redis-server (Debian/Ubuntu), brew install redis (macOS)"


class Missing(Exception):
    """A precondition of the suite does not hold; the message is one line saying what and how to get it."""


def ensure_redis() -> tuple[RedisServer | None, str]:
    """Check the Redis preconditions; returns (the private server started for the run, or None; a one-line
    note of the Redis the tests use). Raises Missing (no redis-server on the PATH, or a private one that
    would not start within its 10 s)."""
    host, port = shared_address()
    if redis_server_binary() is None:
        reachable = "answers" if answers(host, port) else "does not answer either"
        raise Missing(f"redis-server is not on the PATH (the tests start private Redis servers; the shared Redis "
                      f"{host}:{port}, {SHARED_VARIABLE}, {reachable}): {INSTALL_HINT}")
    if answers(host, port):
        return None, f"wsgw tests: Redis on {host}:{port} ({SHARED_VARIABLE})"
    server = RedisServer()
    try:
        server.start()
    except RuntimeError as e:
        raise Missing(f"no Redis answers on {host}:{port} ({SHARED_VARIABLE}) and a private redis-server did not "
                      f"start: {' '.join(str(e).split())[:200]}") from e
    os.environ[SHARED_VARIABLE] = f"127.0.0.1:{server.port}"
    return server, (f"wsgw tests: no Redis answers on {host}:{port} ({SHARED_VARIABLE}): using a private "
                    f"redis-server on 127.0.0.1:{server.port} for this run")


def interrupt_the_tests() -> None:
    """Make Ctrl-C (SIGINT) stop the run while a test waits on the reactor.

    pytest-twisted runs the reactor in a greenlet and leaves SIGINT to ``default_int_handler``, so the
    KeyboardInterrupt is raised in the reactor's greenlet, where Twisted's main loop logs it and goes on:
    the run never ends. This handler ends the wait of the main greenlet (a test's or a fixture's, through
    pytest-twisted's ``blockon_default``) with the KeyboardInterrupt instead, which ends the session as pytest
    does on Ctrl-C; the interrupted coroutine's own Deferred, when it fires later, no longer switches to the
    main greenlet. Call it from the main greenlet, after pytest-twisted configured."""
    main = greenlet.getcurrent()
    waiting: list[Deferred[Any]] = []
    blockon = pytest_twisted.blockon_default

    def blockon_default(d: Deferred[Any]) -> Any:
        wait: Deferred[Any] = Deferred()  # what the main greenlet waits on: d's result, or the interrupt

        def forward(result: Any) -> None:
            if not wait.called:  # after an interrupt, d's result goes nowhere
                wait.errback(result) if isinstance(result, Failure) else wait.callback(result)

        d.addBoth(forward)
        waiting.append(wait)
        try:
            return blockon(wait)
        finally:
            waiting.pop()

    def handler(signum: int, frame: FrameType | None) -> None:
        if greenlet.getcurrent() is main:
            raise KeyboardInterrupt
        if waiting and not waiting[-1].called:
            waiting[-1].errback(Failure(KeyboardInterrupt()))  # switches to the main greenlet, which raises it
        else:
            main.throw(KeyboardInterrupt())

    pytest_twisted.blockon_default = blockon_default  # looked up by name at each call
    signal.signal(signal.SIGINT, handler)

