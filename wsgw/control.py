"""Operator requests across instances: ``/disconnect`` and ``/revoke`` on the control topic (PROTOCOL.md §3.1).

An operator request (``Operator``, called by the operator pages) becomes one
control message on the bus topic ``control``, which every instance, the
sender included, applies (``ControlHandler``, the Dispatcher's handler of
``control``). A message is a JSON object::

    {"op": "disconnect"|"revoke", "login"?, "sub"?, "jti"?, "before"?, "reason"?, "at": <unix s>,
     "id": "<hex>", "mac": "<hex>"}

``mac`` is the hex HMAC-SHA256, keyed by the operator token (``[admin]
publish_token_file``), of the canonical JSON (``canonical``: sorted keys, no
spaces, ASCII) of every other field, so no other publisher on Redis can forge
one. A receiver drops (logs within the log budget, and counts by op and
outcome) a message it cannot verify (``forged``: a wrong or missing mac, or no
operator token configured here), one of a bad shape (``malformed``), and one
whose ``at`` is more than ``MAX_SKEW`` seconds away from its clock or whose
``id`` it applied already (``stale``: a replay). ``disconnect`` closes the
login's and sub's sessions with 4003 and stores nothing; ``revoke`` adds the
revocations to this instance's copy and closes the live sessions holding a
token they refuse (4003). For ``revoke`` the sender stores the revocations
(``IRevocationStore``) before publishing, so an instance started later loads
them (``RevocationLoader``), and an instance whose bus subscriber reconnected (the messages sent meanwhile
are lost) loads them again (``RevocationLoader.catch_up``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgw.access import Access, AccessError
from wsgw.gateway import Gateway
from wsgw.interfaces import IBus, IRevocationStore
from wsgw.logs import LineBudget
from wsgw.revocations import Revocation, Revocations
from wsgw.sessions import Session

OPS = ("disconnect", "revoke")
OUTCOMES = ("applied", "forged", "malformed", "stale")
MAX_SKEW = 300.0  # seconds a control message's "at" may differ from the receiver's clock
MAX_KEY_CHARS = 512  # a login, sub or jti in an operator request
MAX_REASON_CHARS = 200  # a disconnect reason is cut to this
DEFAULT_REASON = "disconnected by an operator"
_KEYS = ("login", "sub", "jti")
_FIELDS = {"disconnect": frozenset({"login", "sub", "reason"}), "revoke": frozenset({"login", "sub", "jti", "before"})}


class RequestError(ValueError):
    """An operator request's body is not one the gateway takes; the message says why (answered 400)."""


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes a control message's mac covers: its JSON with sorted keys, no spaces, ASCII only (ValueError for
    a value JSON cannot hold, e.g. NaN)."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def mac(token: bytes, message: Mapping[str, Any]) -> str:
    """The hex HMAC-SHA256 of ``canonical(message)`` keyed by ``token``."""
    return hmac.new(token, canonical(message), hashlib.sha256).hexdigest()


def sign(token: bytes, message: Mapping[str, Any]) -> bytes:
    """``message`` with its ``mac``, as the payload to publish."""
    return canonical({**message, "mac": mac(token, message)})


def parse_request(op: str, body: object, now: float, max_token_lifetime: float) -> dict[str, Any]:
    """The control message fields (without ``at``, ``id``, ``mac``) of an operator request's decoded JSON body.

    ``op`` is ``disconnect`` (fields ``login``, ``sub``, ``reason``) or ``revoke`` (``login``, ``sub``, ``jti``,
    ``before``). At least one of login, sub (and jti, for revoke) is needed; each a non-empty string of at most
    ``MAX_KEY_CHARS``. ``reason`` is a string, cut to ``MAX_REASON_CHARS`` (empty or absent: ``DEFAULT_REASON``).
    ``before`` (unix seconds, absent: ``now``) is a finite number, not a boolean, at most ``max_token_lifetime``
    in the future. RequestError with the reason otherwise (PROTOCOL.md §3.1)."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS[op])
    if unknown:
        raise RequestError(f"unknown field {unknown[0][:40]!r}: {op} takes {', '.join(sorted(_FIELDS[op]))}")
    fields: dict[str, Any] = {"op": op}
    for name in _KEYS:
        if name in body and name in _FIELDS[op]:
            fields[name] = _string(name, body[name])
            if not fields[name]:
                raise RequestError(f"{name} must not be empty")
            if len(fields[name]) > MAX_KEY_CHARS:
                raise RequestError(f"{name} is over {MAX_KEY_CHARS} characters")
    if not any(name in fields for name in _KEYS):
        raise RequestError(f"{op} needs {' or '.join(k for k in _KEYS if k in _FIELDS[op])}")
    if op == "disconnect":
        reason = _string("reason", body.get("reason", ""))
        fields["reason"] = reason[:MAX_REASON_CHARS] or DEFAULT_REASON
        return fields
    before = body.get("before", now)
    if not _finite(before):
        raise RequestError("before must be a finite number (unix seconds)")
    if before > now + max_token_lifetime:
        raise RequestError(f"before is more than max_token_lifetime ({max_token_lifetime:g} s) in the future")
    fields["before"] = before
    return fields


def _finite(value: object) -> bool:
    """A finite JSON number, not a boolean (compared, not ``math.isfinite``: a 400-digit int overflows a float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{name} is not valid Unicode (a lone surrogate)") from None
    return value


def revocations_of(fields: Mapping[str, Any], at: float) -> list[Revocation]:
    """The revocations a ``revoke`` message's fields name: login and sub issued before ``before``, the jti as of
    ``at`` (when it was revoked)."""
    return [Revocation(name, fields[name], at if name == "jti" else float(fields["before"]))
            for name in _KEYS if name in fields]


class Operator:
    """Turns operator requests into signed control messages on ``bus`` (topic ``control``); ``token`` is the
    operator token (the pages answer 403 without one and never call this)."""

    def __init__(self, clock: IReactorTime, bus: IBus, store: IRevocationStore, revocations: Revocations,
                 token: bytes) -> None:
        self._clock = clock
        self._bus = bus
        self._store = store
        self._revocations = revocations
        self._token = token

    def set_token(self, token: bytes) -> None:
        """Sign with ``token`` from now on (SIGHUP, wsgw.reload)."""
        self._token = token

    def parse(self, op: str, body: object) -> dict[str, Any]:
        """``parse_request`` at this instance's time and ``max_token_lifetime``; RequestError for a bad body."""
        return parse_request(op, body, self._clock.seconds(), self._revocations.max_token_lifetime)

    def request(self, fields: Mapping[str, Any]) -> Deferred[None]:
        """Send the request ``fields`` (from ``parse_request``): a ``revoke`` is stored first (every revocation
        saved, and added to this instance's copy), then published. Fails when the store or the bus does (the
        caller answers 503); fires once the bus took it."""
        now = self._clock.seconds()
        message = {**fields, "at": now, "id": os.urandom(12).hex()}
        saved: Deferred[Any] = succeed(None)
        if fields["op"] == "revoke":
            revocations = revocations_of(fields, now)
            saved = gatherResults([self._store.save(r, self._revocations.expires(r)) for r in revocations],
                                  consumeErrors=True)
            saved.addCallback(lambda _: self._revocations.add_all(revocations))
        payload = sign(self._token, message)
        return saved.addCallback(lambda _: self._bus.publish("control", payload)).addCallback(lambda _: None)


class ControlHandler:
    """The Dispatcher's handler of topic ``control``: verifies each message and applies it to ``gateway``.

    ``token`` is the operator token (None: every message is dropped as forged). ``counts`` holds
    ``(op, outcome)`` -> messages (op ``other`` for one not of ``OPS``; outcomes ``OUTCOMES``), for /metrics.
    Rejected messages are logged within ``log_budget`` (kind ``control``). Never raises MalformedEvent: it
    counts its own.
    """

    _log = Logger()

    def __init__(self, gateway: Gateway, token: bytes | None, clock: IReactorTime,
                 log_budget: LineBudget | None = None) -> None:
        self._gateway = gateway
        self._token = token
        self._clock = clock
        self._budget = log_budget if log_budget is not None else LineBudget(clock)
        self.counts: Counter[tuple[str, str]] = Counter()
        self._seen: OrderedDict[str, float] = OrderedDict()  # id of an applied message -> when it was received

    def set_token(self, token: bytes | None) -> None:
        """Verify with ``token`` from now on (SIGHUP, wsgw.reload): a message signed with the previous one is
        dropped as forged."""
        self._token = token

    def handle(self, event: dict[str, Any]) -> None:
        op = event.get("op")
        label = op if isinstance(op, str) and op in OPS else "other"
        outcome, why = self._check(event)
        self.counts[(label, outcome)] += 1
        if outcome != "applied":
            self._budget.warn(self._log, "control", "dropped a control message ({outcome}): {why}", outcome=outcome,
                              why=why)
            return
        if op == "disconnect":
            self._disconnect(event)
        else:
            self._revoke(event)

    def _check(self, event: dict[str, Any]) -> tuple[str, str]:
        """``(outcome, why)``: ``("applied", "")`` for a message to apply, else why it is dropped."""
        if self._token is None:
            return "forged", "no operator token is configured here ([admin] publish_token_file)"
        given = event.get("mac")
        rest = {k: v for k, v in event.items() if k != "mac"}
        if not isinstance(given, str):
            return "forged", "no mac"
        try:
            expected = mac(self._token, rest)
        except (ValueError, RecursionError) as e:
            return "malformed", f"not canonical JSON: {str(e)[:80]}"
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            return "forged", "wrong mac"
        shape = _shape_problem(event)
        if shape is not None:
            return "malformed", shape
        now = self._clock.seconds()
        if abs(event["at"] - now) > MAX_SKEW:
            return "stale", f"sent at {event['at']:.0f}, {event['at'] - now:+.0f} s from now"
        while self._seen and next(iter(self._seen.values())) < now - 2 * MAX_SKEW:
            self._seen.popitem(last=False)
        if event["id"] in self._seen:
            return "stale", f"message {event['id'][:32]} was applied already (a replay)"
        self._seen[event["id"]] = now
        return "applied", ""

    def _disconnect(self, event: dict[str, Any]) -> None:
        reason = event.get("reason") or DEFAULT_REASON
        for session in self._designated(event):
            self._gateway.revoke(session, reason, "disconnect")

    def _revoke(self, event: dict[str, Any]) -> None:
        self.enforce(revocations_of(event, event["at"]))

    def enforce(self, revocations: Sequence[Revocation]) -> None:
        """Add ``revocations`` to the gateway's copy, then close (4003 ``token revoked``) the live sessions holding
        a token it refuses now: those of a login or sub found through the table's indexes, and for a jti (which no
        index holds) by scanning every open session; and take a workspace revocation's workspace out of the live
        sessions whose token it withholds it from (``Gateway.reauthorized``: a deletion under the claims resolver
        that this instance did not see, its bus subscriber being down, PROTOCOL.md §3.1)."""
        self._gateway.revocations.add_all(revocations)
        logins = [r.key for r in revocations if r.kind == "login"]
        subs = [r.key for r in revocations if r.kind == "sub"]
        jtis = {r.key for r in revocations if r.kind == "jti"}
        holders = list(self._gateway.table.designated(logins=logins, subs=subs)) if logins or subs else []
        if jtis:
            holders += [s for s in self._gateway.table if s.access is not None and s.access.jti in jtis]
        for session in holders:
            if session.access is not None and self._gateway.revocations.refuses(session.access.identity):
                self._gateway.revoke(session, "token revoked", "revoke")
        workspaces = [r.key for r in revocations if r.kind == "workspace"]
        for session in self._gateway.table.designated(workspaces=workspaces) if workspaces else ():
            if session.access is not None and self._gateway.revocations.withheld(session.access):
                self._gateway.reauthorized(session, session.access)

    def _designated(self, event: Mapping[str, Any]) -> set[Session]:
        logins = [event["login"]] if "login" in event else []
        subs = [event["sub"]] if "sub" in event else []
        return self._gateway.table.designated(logins=logins, subs=subs) if logins or subs else set()


def _shape_problem(event: Mapping[str, Any]) -> str | None:
    """What is wrong with a verified message's shape, or None."""
    op = event.get("op")
    if op not in OPS:
        return f"unknown op {str(op)[:40]!r}"
    at = event.get("at")
    if not _finite(at):
        return "at must be a number"
    if not isinstance(event.get("id"), str) or not event["id"]:
        return "id must be a string"
    allowed = _FIELDS[op] | {"op", "at", "id", "mac"}
    if set(event) - allowed:
        return f"unknown fields for {op}"
    if not any(isinstance(event.get(k), str) and event[k] for k in _KEYS if k in _FIELDS[op]):
        return f"{op} names nobody"
    if any(k in event and not isinstance(event[k], str) for k in (*_KEYS, "reason")):
        return "login, sub, jti and reason must be strings"
    if op == "revoke":
        before = event.get("before")
        if not _finite(before):
            return "before must be a number"
    return None


@implementer(IRevocationStore)
class MemoryRevocationStore:
    """The embedded mode's store: nothing outlives the instance, whose ``Revocations`` is the only copy."""

    def load(self) -> Deferred[list[Revocation]]:
        return succeed([])

    def save(self, revocation: Revocation, expires: float) -> Deferred[None]:
        return succeed(None)


class RevocationLoader:
    """Loads ``store`` into ``gateway.revocations`` at start, before any subscribe is accepted (PROTOCOL.md §3.1):
    ``start`` makes the gateway pass every subscribe through ``ready`` (``Gateway.wait_for``), which holds it while
    an attempt is under way and refuses it (AccessError, 1013) while the last attempt failed. ``ready()`` fires
    once the store can answer (Redis connected; None: at once); an attempt that is not done within ``timeout``
    seconds, or fails, is retried after ``retry`` seconds, doubling up to ``max_retry``. What is loaded goes to
    ``apply`` (default: added to ``gateway.revocations``; the service gives ``ControlHandler.enforce``).
    ``catch_up`` loads again after the bus reconnected. ``loaded`` says whether a load succeeded, ``failures``
    counts failed attempts."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, store: IRevocationStore, gateway: Gateway, *,
                 ready: Callable[[], Deferred[Any]] | None = None, timeout: float = 10.0,
                 retry: float = 1.0, max_retry: float = 30.0,
                 apply: Callable[[list[Revocation]], object] | None = None) -> None:
        self._clock = clock
        self._apply = apply or gateway.revocations.add_all
        self._generation = 0  # the bus subscriber's reconnects as of the last load
        self._catching_up = False
        self._store = store
        self._gateway = gateway
        self._store_ready = ready or (lambda: succeed(None))
        self._timeout = timeout
        self._retry = self._first_retry = retry
        self._max_retry = max_retry
        self._call: IDelayedCall | None = None
        self._loading: Deferred[Any] | None = None  # the attempt under way: subscribes wait for it
        self._unloaded = False  # the last attempt failed: subscribes are refused
        self._stopped = False
        self.loaded = False
        self.failures = 0

    def start(self) -> None:
        """Hold subscribes until the revocations are loaded, and start loading them."""
        self._gateway.wait_for(self.ready)
        self._attempt()

    def stop(self) -> None:
        """Stop retrying (the service stops)."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._loading is not None:
            self._loading.cancel()

    def ready(self, access: Access) -> Access | Deferred[Access]:
        """``access`` once the revocations are loaded (at once when they are); AccessError while they cannot be."""
        loading = self._loading
        if loading is not None:
            waiter: Deferred[None] = Deferred()
            loading.addBoth(lambda _: waiter.callback(None))
            return waiter.addCallback(lambda _: self.ready(access))
        if self._unloaded:
            raise AccessError("revocations unavailable, try again")
        return access

    def _attempt(self) -> None:
        self._call = None
        attempt: Deferred[Any] = self._store_ready()
        attempt.addTimeout(self._timeout, self._clock)
        attempt.addCallback(lambda _: self._store.load())
        attempt.addCallbacks(self._loaded, self._failed)
        self._loading = attempt

        def done(result: object) -> None:
            if self._loading is attempt:
                self._loading, self._unloaded = None, isinstance(result, Failure)

        attempt.addBoth(done)

    def catch_up(self, generation: int) -> None:
        """Load the store again if ``generation`` (the bus subscriber's count of reconnects, polled) moved since the
        last load: control messages published while this instance was off the bus are lost, the revocations they
        stored are not (a missed ``/disconnect`` is lost for good). A failure is logged and retried at the next
        call; meanwhile subscribes go on against the copy this instance has."""
        if generation == self._generation or self._catching_up or self._loading is not None or not self.loaded:
            return
        self._catching_up = True

        def done(revocations: list[Revocation]) -> None:
            self._apply(revocations)
            self._generation = generation
            self._log.info("revocations loaded again after a bus reconnect: {n} in force",
                           n=len(self._gateway.revocations))

        def failed(failure: Failure) -> None:
            self._log.warn("cannot load the revocations after a bus reconnect ({error}): trying again",
                           error=failure.getErrorMessage() or repr(failure.value))

        loading = self._store.load().addCallback(done).addErrback(failed)
        loading.addBoth(lambda _: setattr(self, "_catching_up", False))

    def _loaded(self, revocations: list[Revocation]) -> None:
        self._apply(revocations)
        self.loaded, self._retry = True, self._first_retry
        self._log.info("revocations loaded: {n} in force", n=len(self._gateway.revocations))

    def _failed(self, failure: Failure) -> Failure:
        if self._stopped:
            return failure
        self.failures += 1
        self._log.warn("cannot load the revocations ({error}): subscribes are refused (1013) until they are; "
                       "trying again in {delay:g} s", error=failure.getErrorMessage() or repr(failure.value),
                       delay=self._retry)
        self._call = self._clock.callLater(self._retry, self._attempt)
        self._retry = min(self._retry * 2, self._max_retry)
        return failure
