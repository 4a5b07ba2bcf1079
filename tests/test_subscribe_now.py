"""A subscribe whose token and access are known at once is done without a chain of Deferreds (bench/RESULTS.md
"Connect path", part 5), with the outcome a chain gives: the same frames, closes, refusal counts and logged
failures, whether each step answers at once, later, by failing, or by raising."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from wsgw import gateway as gateway_module
from wsgw.access import Access, AccessError, AuthError
from wsgw.gateway import Gateway
from wsgw.logs import LineBudget
from wsgw.revocations import Revocations
from wsgw.testing import RecordingConnection


class _Budget(LineBudget):
    """Records the failures the gateway logs."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.failures: list[tuple[str, type, list[str]]] = []

    def failure(self, log: Any, text: str, failure: Any = None, **fields: Any) -> None:
        self.failures.append((text, type(failure.value), sorted(fields)))  # (the session ids differ by run)


class _Steps:
    """A verifier and a resolver whose answers the test chooses: ``now`` (a fired Deferred), ``later`` (fired once
    the test calls ``release``), ``fail`` (a failed Deferred) or ``raise`` (raised by the call itself)."""

    def __init__(self, verify: str, resolve: str, error: Exception) -> None:
        self.verify_how, self.resolve_how, self.error = verify, resolve, error
        self.later: list[tuple[Deferred[Any], Any]] = []
        self.refreshes = False

    def _answer(self, how: str, value: Any) -> Any:
        if how == "raise":
            raise self.error
        if how == "fail":
            return fail(self.error)
        if how == "later":
            d: Deferred[Any] = Deferred()
            self.later.append((d, value))
            return d
        return succeed(value)

    def verify(self, token: str) -> Any:
        if self.verify_how == "raise":  # (verify itself raising is not caught: a bug; not this test's)
            return fail(self.error)
        return self._answer(self.verify_how, {"name": token, "sub": "s", "exp": 1000})

    def resolve(self, token: str, claims: dict[str, Any]) -> Any:
        return self._answer(self.resolve_how, Access(claims["name"], claims["sub"], "standard", frozenset(), (),
                                                     claims["exp"]))

    def release(self) -> None:
        while self.later:
            d, value = self.later.pop(0)
            d.callback(value)


def _run(verify: str, resolve: str, error: Exception, ready: str = "none", shortcut: bool = True) -> tuple[Any, ...]:
    """Subscribe, then send a frame that waits behind it; the outcome. ``shortcut=False``: no step is taken as
    known at once, every one goes through the chain (as before this shortcut). (Pure Python only: compiled, the
    gateway's calls of ``_now`` are native, not patched; this module is not among conftest's UNIT_MODULES.)"""
    with pytest.MonkeyPatch.context() as patch:
        if not shortcut:
            patch.setattr(gateway_module, "_now", lambda result: gateway_module._LATER)
        return _run_as_is(verify, resolve, error, ready)


class _Endpoint:
    """Records what the gateway tells it."""

    name = "chat"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def opened(self, session: Any) -> None: ...

    def subscribe(self, session: Any, access: Access) -> None:
        session.access = access
        self.calls.append(("subscribe", access.login))

    def unsubscribe(self, session: Any) -> None:
        session.access = None

    def receive(self, session: Any, frame: dict[str, Any], size: int = 0) -> None:
        self.calls.append(("frame", frame))

    def closed(self, session: Any) -> None:
        self.calls.append(("closed", None))


def _run_as_is(verify: str, resolve: str, error: Exception, ready: str) -> tuple[Any, ...]:
    clock = Clock()
    steps = _Steps(verify, resolve, error)
    budget = _Budget(clock)
    gw = Gateway(clock, steps, steps, log_budget=budget, revocations=Revocations(clock, 10**6))
    endpoint = _Endpoint()
    if ready != "none":
        def ready_fn(access: Access) -> Any:
            if ready == "raise":
                raise error
            return steps._answer(ready, access)
        gw.wait_for(ready_fn)
    conn = RecordingConnection()
    session = gw.open(conn, endpoint)
    results = []
    for frame in ({"@type": "subscribe", "jwt": "alice"}, {"@type": "hello"}):
        d = gw.receive(session, frame)
        if d is not None:  # (what GatewayProtocol.onMessage adds)
            d.addErrback(lambda f: gw.failed("handling a frame of session {sid}", f, sid=session.sid))
        results.append(d is None)
    for _ in range(3):
        steps.release()
    return (conn.frames, conn.closed, dict(gw.refusals), budget.failures, endpoint.calls,
            session.waiting, gw.subscribes_accepted), results


HOWS = ["now", "later", "fail", "raise"]


@pytest.mark.parametrize("verify", ["now", "later", "fail"])
@pytest.mark.parametrize("resolve", HOWS)
@pytest.mark.parametrize("ready", ["none", *HOWS])
@pytest.mark.parametrize("error", [AuthError("bad signature"), AccessError("access refused by the backend: HTTP 403"),
                                   AccessError("access backend unavailable"), RuntimeError("a bug")])
def test_each_step_at_once_later_failing_or_raising_ends_as_in_a_chain(verify: str, resolve: str, ready: str,
                                                                       error: Exception) -> None:
    now, returned = _run(verify, resolve, error, ready)
    chained, _ = _run(verify, resolve, error, ready, shortcut=False)
    assert now == chained
    if verify == resolve == "now" and ready in ("none", "now"):
        assert returned == [True, True]  # done at once: no Deferred to the caller
        assert now[0] == [{"@type": "subscribed", "user": "alice", "exp": 1000}]


@pytest.mark.parametrize("shortcut", [True, False])
def test_a_failing_handler_after_a_known_access_is_logged_as_the_callers_errback_logs_it(shortcut: bool) -> None:
    class Broken:
        name = "broken"

        def opened(self, session: Any) -> None: ...

        def subscribe(self, session: Any, access: Access) -> None:
            raise ValueError("endpoint bug")

        def closed(self, session: Any) -> None: ...

    with pytest.MonkeyPatch.context() as patch:
        if not shortcut:
            patch.setattr(gateway_module, "_now", lambda result: gateway_module._LATER)
        clock = Clock()
        budget = _Budget(clock)
        steps = _Steps("now", "now", RuntimeError())
        gw = Gateway(clock, steps, steps, log_budget=budget, revocations=Revocations(clock, 10**6))
        session = gw.open(RecordingConnection(), Broken())  # type: ignore[arg-type]
        d = gw.receive(session, {"@type": "subscribe", "jwt": "alice"})
        assert (d is None) == shortcut
        if d is not None:
            d.addErrback(lambda f: gw.failed("handling a frame of session {sid}", f, sid=session.sid))
    assert budget.failures == [("handling a frame of session {sid}", ValueError, ["sid"])]
    assert session.waiting is None
