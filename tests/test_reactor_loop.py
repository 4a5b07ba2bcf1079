"""The reactor's iteration, compiled (``wsgw.internals.twisted.run_natively``, ``wsgw.internals.loop.main_loop``;
issue 13, goal 2): a reactor run so does what Twisted's own ``mainLoop`` does, calling ``runUntilCurrent`` only
when it has something to do."""

from __future__ import annotations

import functools
import hashlib
import inspect
import threading
from typing import Any

from twisted.internet import base, reactor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from wsgw.internals.twisted import run_natively


def test_the_copied_code_is_twisteds_own() -> None:
    """``main_loop`` copies ``mainLoop`` and ``timeout`` and knows when ``runUntilCurrent`` has nothing to do: a new
    Twisted that changes any of them must be read again (then update these hashes)."""
    functions = (base.ReactorBase.mainLoop, base.ReactorBase.runUntilCurrent, base.ReactorBase.timeout,
                 base.ReactorBase._insertNewDelayedCalls)
    assert [hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for f in functions] == [
        "769125a86d0cd7e9", "b9fbbdb8e8414792", "347720436ca8713c", "793e23d07f8fb7da"]


def test_only_twisteds_epoll_reactor_before_it_runs_is_run_natively() -> None:
    assert not run_natively(Clock())
    assert reactor.running and not run_natively(reactor)  # (pytest-twisted's, running)

    class Own(EPollReactor):
        def timeout(self) -> float | None:
            return 0.0

    own = Own()
    try:
        assert not run_natively(own)
        assert "mainLoop" not in own.__dict__
    finally:
        _close(own)


def _close(r: EPollReactor) -> None:
    r.waker.connectionLost(None)
    r._poller.close()


def _script(r: EPollReactor, trace: list[str]) -> None:
    """Timed calls (due now, later, cancelled, made by a call, a crashing one), a call from a thread, 60
    cancellations (Twisted's sweep of the timed-call heap), an exception out of an iteration, then a stop."""
    r.callLater(0, trace.append, "now")
    r.callLater(0.01, trace.append, "cancelled").cancel()
    r.callLater(0.02, lambda: (trace.append("a"), r.callLater(0, trace.append, "made by a")))
    for call in [r.callLater(100, trace.append, "never") for _ in range(60)]:
        call.cancel()

    def from_thread() -> None:
        thread = threading.Thread(target=r.callFromThread, args=(trace.append, "from a thread"))
        thread.start()
        thread.join()  # queued before the next iteration
        trace.append(f"pending {len(r._pendingTimedCalls)}")

    r.callLater(0.03, from_thread)
    r.callLater(0.04, lambda: 1 / 0)
    iterate = r.doIteration
    broken = [True]

    def iteration(timeout: Any) -> None:
        if broken and trace and trace[-1] == "break" and broken.pop():
            raise KeyError("an iteration's bug")
        iterate(timeout)

    r.doIteration = iteration  # type: ignore[method-assign]
    r.callLater(0.05, trace.append, "break")
    r.callLater(0.06, lambda: trace.append(f"after the bug, pending {len(r._pendingTimedCalls)}"))
    r.addSystemEventTrigger("before", "shutdown", trace.append, "shutdown")
    r.callLater(0.07, r.stop)


def _run(natively: bool) -> tuple[list[str], list[str], int]:
    """The script's trace on a new epoll reactor, what it logged, and how often ``runUntilCurrent`` ran."""
    r = EPollReactor()
    trace: list[str] = []
    logged: list[str] = []
    runs = [0]
    until_current = r.runUntilCurrent

    def counted() -> None:
        runs[0] += 1
        until_current()

    r.runUntilCurrent = counted  # type: ignore[method-assign]

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        text = event.get("log_format") or ""
        if failure is not None or text == "Main loop terminated.":
            logged.append(f"{text.split('{')[0].strip()}: {failure.type.__name__ if failure else ''}")

    if natively:
        assert run_natively(r) and isinstance(r.mainLoop, functools.partial)
    globalLogPublisher.addObserver(observe)
    try:
        _script(r, trace)
        r.run(installSignalHandlers=False)
    finally:
        globalLogPublisher.removeObserver(observe)
        _close(r)
    return trace, logged, runs[0]


def test_a_native_run_does_what_twisteds_main_loop_does() -> None:
    twisted_trace, twisted_logged, twisted_runs = _run(natively=False)
    trace, logged, runs = _run(natively=True)
    assert trace == twisted_trace == [
        "now", "a", "made by a", "pending 4", "from a thread", "break",
        "after the bug, pending 1", "shutdown"]
    assert logged == twisted_logged == [
        "while handling timed call: ZeroDivisionError", "Unexpected error in main loop: KeyError",
        "Main loop terminated.: "]
    assert runs < twisted_runs  # the iterations with nothing due skipped it
