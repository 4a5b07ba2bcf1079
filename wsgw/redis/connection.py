"""One Redis connection on txredisapi (``RedisCommands``), and the base of every Redis link (``RedisLink``).

Each connection is kept up by a ``twisted.application.internet.ClientService``
on an endpoint string (``tcp:host:port``, ``tls:host:port``, ``unix:path``),
reconnecting with a capped backoff, and redoes its whole setup (AUTH, SELECT,
and what a subclass adds, e.g. SUBSCRIBE) after every (re)connect. A
connection counts as up only once that setup has succeeded; commands issued
while it is not up fail at once with ``txredisapi.ConnectionError``, and
commands in flight when it drops fail with it too, so nothing waits forever.

Every connection PINGs Redis every ``ping_interval`` seconds once set up.
While a PING is unanswered, what counts is silence: no byte from Redis for
``stall_timeout`` seconds marks the connection ``stalled`` (Redis frozen,
swapping, or blocked by a long command: /healthz answers 503 within seconds)
until the answer comes; for ``reply_timeout`` seconds, it drops the
connection, which is then re-made. A connection still receiving is never
stalled however late its PONG: on the bus subscriber the PONG comes after
every message queued before it, and a daemon working through a burst
(12,000 events) is behind, not cut off; dropping it would lose the rest of
the burst. A short stall costs no reconnection, so no pub/sub message is
lost to it.

Replies: bulk strings come back as ``bytes`` (never decoded, never turned into
numbers), integer replies as ``int``, status replies as ``str`` ("OK"),
arrays as lists of those; Redis errors fail the Deferred with
``txredisapi.ResponseError``.

txredisapi 1.6.0 quirks worked around here (checked on Python 3.11, Twisted 26):

- With its defaults (``charset="utf-8"``, ``convertNumbers=True``) a payload
  ``b"123"`` arrives as ``int`` 123, a UTF-8 one as ``str`` and anything else
  as ``bytes``; we build the protocol with ``charset=None, convertNumbers=False``.
- It imports the global reactor and uses its ``callLater`` for reply timeouts;
  every protocol here gets the injected reactor's ``callLater`` instead.
- It parses the rest of a read after each bulk string on a later reactor
  turn: here at once (``wsgw.internals.txredisapi.WholeReads``).
- Its own AUTH/SELECT (password/dbid protocol arguments) calls
  ``RedisFactory`` methods (``stopTrying``, ``connectionError``) that a
  ClientService factory has not; we never pass them and send AUTH/SELECT
  ourselves.
- ``RedisProtocol`` silently becomes ``HiredisProtocol`` when hiredis is
  installed; we always build on the pure-Python ``BaseRedisProtocol`` (the
  bus subscriber parses with hiredis's ``Reader``: ``wsgw.bus.redis``).

And one Twisted quirk: a connection that ClientService's ``prepareConnection``
rejects stays open, and closing it logs a critical ``NoTransition``. So the
setup runs from ``connectionMade``; a connection whose setup fails (wrong
password, ...) is closed while ClientService counts it connected, and the
backoff still grows because the retry policy is given the larger of
ClientService's attempt count and the count of consecutive rejections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol
from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError, ResponseError  # type: ignore[import-untyped]
from zope.interface import implementer

from wsgw.internals.txredisapi import WholeReads

__all__ = ["ConnectionError", "RedisCommands", "RedisConnection", "RedisLink", "ResponseError", "default_retry_policy"]

RetryPolicy = Callable[[int], float]

DEFAULT_REPLY_TIMEOUT = 10.0
DEFAULT_PING_INTERVAL = 1.0
DEFAULT_STALL_TIMEOUT = 2.0


def default_retry_policy() -> RetryPolicy:
    """Exponential backoff from 0.5 s, capped at 5 s (plus up to 1 s of jitter)."""
    return backoffPolicy(initialDelay=0.5, maxDelay=5.0)


class RedisConnection(WholeReads):
    """A txredisapi protocol that returns bytes, times on the injected reactor and reports to its link."""

    def __init__(self, link: RedisLink, reply_timeout: float | None) -> None:
        super().__init__(charset=None, replyTimeout=reply_timeout, convertNumbers=False)
        self.callLater = link.reactor.callLater
        self._link = link
        self.drop_reason: str | None = None  # why we dropped it ourselves, when we did
        self.received_at = 0.0  # when bytes last came from Redis (the link's reactor seconds)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.received_at = self._link.reactor.seconds()
        super().dataReceived(data)

    def connectionMade(self) -> None:
        super().connectionMade()  # without password/dbid this only marks the protocol usable
        self._link._connection_made(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self._link._connection_lost(self, reason)


class _Factory(protocol.Factory):
    noisy = False

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    def buildProtocol(self, addr: Any) -> RedisConnection:
        conn = self._link._build()
        conn.factory = self
        return conn


@implementer(IStreamClientEndpoint)
class _NotingEndpoint:
    """An endpoint that tells its link why a connection attempt failed (ClientService only logs it)."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: RedisLink) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self._endpoint.connect(factory).addErrback(self._link._connect_failed)


class RedisLink(service.Service):
    """One Redis connection kept up by a ClientService, usable only once its setup (AUTH, SELECT, ...) succeeded."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        password: str | None,
        db: int,
        retry_policy: RetryPolicy | None,
        reply_timeout: float | None,
        role: str,
        *,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self._endpoint = endpoint
        self._password = password
        self._db = db
        self._role = role
        self._reply_timeout = reply_timeout
        self._policy = retry_policy if retry_policy is not None else default_retry_policy()
        self._rejections = 0
        self._ready: RedisConnection | None = None
        self.reconnects = 0  # successful setups after the first one (metrics)
        self._was_up = False
        self._waiters: list[Deferred[Any]] = []
        self._problem: str | None = None
        self._ping_interval = ping_interval
        self._stall_timeout = stall_timeout
        self._ping_call: DelayedCall | None = None
        self._stall_call: DelayedCall | None = None
        self._stalled_since: float | None = None
        self._client = ClientService(
            _NotingEndpoint(clientFromString(reactor, endpoint), self),
            _Factory(self),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    @property
    def connected(self) -> bool:
        """True once connected and set up, until the connection drops."""
        return self._ready is not None

    @property
    def role(self) -> str:
        """What this connection is for ("bus subscriber", "bus publisher", "chat store", ...), for logs and metrics."""
        return self._role

    @property
    def problem(self) -> str | None:
        """Why the last setup or connection failed, until the next successful setup."""
        return self._problem

    @property
    def stalled(self) -> str | None:
        """While set up but a PING has gone unanswered for ``stall_timeout`` seconds: how long
        ('no answer to PING for 2.3 s'); else None."""
        if self._stalled_since is None:
            return None
        return f"no answer to PING for {self.reactor.seconds() - self._stalled_since:.1f} s"

    @property
    def trouble(self) -> str | None:
        """Why this connection cannot serve now ('connecting (...)', 'stopped', 'stalled: ...'); None when it can."""
        if self._ready is None:
            return self._state()
        stalled = self.stalled
        return None if stalled is None else f"stalled: {stalled}"

    def whenConnected(self) -> Deferred[Any]:
        """Fires with this object now if connected, else at the next successful setup (CancelledError on stop)."""
        if self._ready is not None:
            return succeed(self)
        waiter: Deferred[Any] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            # ClientService refuses a second stop made from callbacks of the first one
            return succeed(None)
        super().stopService()
        self._stop_pinging()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(CancelledError(f"Redis {self._role} stopped"))
        return self._client.stopService()

    def _retry_delay(self, attempt: int) -> float:
        # a rejected connection had connected, so ClientService restarts its count at 1: keep ours
        return self._policy(max(attempt, self._rejections))

    def _build(self) -> RedisConnection:
        return RedisConnection(self, self._reply_timeout)

    def _setup(self, conn: RedisConnection) -> Deferred[Any]:
        return ensureDeferred(self._auth_and_select(conn))

    async def _auth_and_select(self, conn: RedisConnection) -> None:
        if self._password is not None:
            await conn.execute_command("AUTH", self._password)
        if self._db:
            await conn.execute_command("SELECT", self._db)

    def _connect_failed(self, failure: Failure) -> Failure:
        self._problem = failure.getErrorMessage()
        return failure

    def _connection_made(self, conn: RedisConnection) -> None:
        setup = self._setup(conn)
        setup.addCallbacks(lambda _: self._set_up(conn), lambda f: self._setup_failed(conn, f))
        setup.addErrback(lambda f: self._log.failure("Redis {role} setup bookkeeping failed", f, role=self._role))

    def _set_up(self, conn: RedisConnection) -> None:
        if not conn.connected or not self.running:
            return
        self._rejections = 0
        self._problem = None
        self._ready = conn
        if self._was_up:
            self.reconnects += 1
        self._was_up = True
        self._log.info("Redis {role} connected to {endpoint}", role=self._role, endpoint=self._endpoint)
        self._schedule_ping(conn)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def _schedule_ping(self, conn: RedisConnection) -> None:
        if self._ping_interval and self._ready is conn:
            self._ping_call = self.reactor.callLater(self._ping_interval, self._ping, conn)

    def _ping(self, conn: RedisConnection) -> None:
        self._ping_call = None
        if self._ready is not conn:
            return
        # no reply timeout of txredisapi's (counted from the PING, however busy the connection): _watch's instead
        sent = self.reactor.seconds()
        conn.execute_command("PING", apply_timeout=False).addCallbacks(lambda _: self._answered(conn),
                                                                       lambda f: self._ping_failed(conn, f))
        self._watch(conn, sent)

    def _answered(self, conn: RedisConnection) -> None:
        if self._ready is not conn:
            return
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None
        if self._stalled_since is not None:
            self._log.info("Redis {role} answers again after {seconds:.1f} s", role=self._role,
                           seconds=self.reactor.seconds() - self._stalled_since)
            self._stalled_since = None
        self._schedule_ping(conn)

    def _ping_failed(self, conn: RedisConnection, failure: Failure) -> None:
        if failure.check(ResponseError):  # an answer all the same (e.g. LOADING): Redis is there
            self._answered(conn)
        elif conn.drop_reason is None:
            conn.drop_reason = f"no answer to PING: {failure.getErrorMessage()}"

    def _watch(self, conn: RedisConnection, sent: float) -> None:
        """While the PING sent at ``sent`` is unanswered: silence from Redis (no byte since the PING or since the
        last byte) for ``stall_timeout`` marks the connection stalled, for ``reply_timeout`` drops it; checked
        again when the next of these could be reached."""
        self._stall_call = None
        if self._ready is not conn:
            return
        now = self.reactor.seconds()
        quiet_since = max(sent, conn.received_at)
        quiet = now - quiet_since + 1e-9  # (a timer fires at its time, give or take a rounding)
        if self._reply_timeout and quiet >= self._reply_timeout:
            conn.drop_reason = f"no answer to PING: nothing from Redis for {quiet:.1f} s"
            conn.transport.abortConnection()
            return
        if self._stall_timeout and quiet >= self._stall_timeout and self._stalled_since is None:
            self._stalled_since = quiet_since
            self._log.warn("Redis {role} at {endpoint} has not answered a PING for {seconds} s", role=self._role,
                           endpoint=self._endpoint, seconds=self._stall_timeout)
        limits = [t for t in (self._stall_timeout if self._stalled_since is None else 0, self._reply_timeout) if t]
        due = [quiet_since + t for t in limits if quiet_since + t > now]
        if due:
            self._stall_call = self.reactor.callLater(min(due) - now, self._watch, conn, sent)

    def _stop_pinging(self) -> None:
        for call in (self._ping_call, self._stall_call):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._stall_call = None
        self._stalled_since = None

    def _setup_failed(self, conn: RedisConnection, failure: Failure) -> None:
        self._problem = failure.getErrorMessage()
        if not conn.connected:
            return  # lost during setup: _connection_lost logs it, ClientService reconnects
        self._rejections += 1
        self._log.error(
            "Redis {role} at {endpoint}: connection setup failed, retrying: {error}",
            role=self._role,
            endpoint=self._endpoint,
            error=self._problem,
        )
        conn.transport.abortConnection()

    def _connection_lost(self, conn: RedisConnection, reason: Failure) -> None:
        if self._ready is not conn:
            return
        self._ready = None
        self._stop_pinging()
        self._problem = conn.drop_reason or reason.getErrorMessage()
        if self.running:
            self._log.warn(
                "Redis {role} lost its connection to {endpoint} ({reason}); reconnecting",
                role=self._role,
                endpoint=self._endpoint,
                reason=self._problem,
            )

    def _state(self) -> str:
        if not self.running:
            return "stopped"
        if self._ready is not None:
            return "connected"
        return "connecting" if self._problem is None else f"connecting ({self._problem})"


class RedisCommands(RedisLink):
    """One Redis command connection (a twisted Service): ``execute_command`` while ``connected``, failing fast otherwise.

    ``retry_policy(attempt) -> seconds`` paces reconnection (default: ``default_retry_policy()``);
    ``reply_timeout`` (seconds, None for none) fails a command and drops the connection when Redis does not answer;
    ``ping_interval`` (seconds, None for none) and ``stall_timeout`` as in the module docstring.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        password: str | None = None,
        db: int = 0,
        *,
        retry_policy: RetryPolicy | None = None,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
        role: str = "commands",
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        super().__init__(reactor, endpoint, password, db, retry_policy, reply_timeout, role,
                         ping_interval=ping_interval, stall_timeout=stall_timeout)
        self._script_shas: dict[str, str] = {}

    @property
    def state(self) -> str:
        """'connected', 'connecting' (with the last problem in parentheses) or 'stopped'."""
        return self._state()

    def execute_command(self, *args: Any) -> Deferred[Any]:
        """Send one command (``"SET", key, value``); fails at once with ConnectionError while not connected."""
        conn = self._ready
        if conn is None:
            return fail(ConnectionError(f"Redis {self._role} at {self._endpoint} is not connected"))
        try:
            return conn.execute_command(*args)
        except Exception:  # noqa: BLE001 - e.g. an argument that cannot be encoded: fail the Deferred
            return fail()

    def run_script(self, source: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Deferred[Any]:
        """Run a Lua script by EVALSHA, falling back to EVAL (which caches it in Redis) on NOSCRIPT."""
        sha = self._script_shas.get(source)
        if sha is None:
            sha = self._script_shas[source] = hashlib.sha1(source.encode()).hexdigest()

        def load_and_run(failure: Failure) -> Any:
            failure.trap(ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return self.execute_command("EVAL", source, len(keys), *keys, *args)

        return self.execute_command("EVALSHA", sha, len(keys), *keys, *args).addErrback(load_and_run)
