"""``RedisBus``: the event bus (``IBus``) on Redis pub/sub, for production and for several gateway instances.

A subscriber connection SUBSCRIBEs to every configured channel after each
(re)connect; a publisher connection PUBLISHes. Both are
``wsgw.redis.connection.RedisLink``s, which PING to notice a stalled or dead Redis.

The subscriber connection parses what Redis sends with hiredis's ``Reader``
(a C parser) instead of txredisapi's pure-Python one, which pauses and resumes
the transport around every bulk string and resumes parsing on a later reactor
turn, so that each message cost a reactor turn of its own (issue 13). Every
complete ``message`` reply of one read is handed over as one batch, in the
order Redis sent them; the other replies (SUBSCRIBE acknowledgements, PONG,
AUTH's OK, errors) go to txredisapi's reply handling as its own parser would
give them (a status reply as ``str``, an error as ``ResponseError``), after
the messages that came before them. A message split across reads is
reassembled; payloads are never converted. A ``message`` whose channel or
payload is not a bulk string is not what Redis sends: like bytes that are not
RESP, it drops the connection (to be made again), after the messages before it. txredisapi still makes the commands,
their waiters and timeouts, and the connection.

``RedisBus`` hands the messages of one read to its listener in one call when
it is the only one and has a ``batch`` method (``listen``: one call a read
instead of a few per message, issue 13, goal 2), and delivers a batch of
several messages between ``batch.begin()`` and ``batch.end()`` (``wsgw.web.outbound.WriteBatch``: each socket's frames of
the batch then leave in one write); a batch of one is delivered as before.

txredisapi's ``SubscriberProtocol`` hands the 2nd..Nth SUBSCRIBE
acknowledgement to whichever command waits next (e.g. a PING); the subscriber
connection here counts the acknowledgements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgw.bus import check_publish, check_topics
from wsgw.bus.reads import Deliveries, MessageReads, Messages
from wsgw.interfaces import IBus
from wsgw.internals.twisted import read_directly, stop_reading_directly
from wsgw.redis.connection import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_REPLY_TIMEOUT,
    RedisCommands,
    RedisConnection,
    RedisLink,
    RetryPolicy,
)

Listener = Callable[[str, bytes], Any]


class Batch(Protocol):
    """What ``RedisBus`` calls around the delivery of a batch of several messages."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class _SubscriberConnection(RedisConnection):
    """A connection in subscribed mode: the messages of each read go to ``on_messages(batch)``, other replies to
    their waiters. Each read is one compiled call (``wsgw.bus.reads.MessageReads.data_received``, this instance's
    ``dataReceived``) in place of txredisapi's parser."""

    def __init__(self, link: RedisLink, reply_timeout: float | None, on_messages: Callable[[Messages], None]) -> None:
        super().__init__(link, reply_timeout)
        self._acks_pending = 0
        self.dataReceived = MessageReads(  # type: ignore[method-assign, assignment]
            self, link.reactor.seconds, on_messages, self._not_redis, self._failed).data_received

    def connectionMade(self) -> None:
        read_directly(self._link.reactor, self.transport, self)  # no log context nor wrappers per read (internals)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        stop_reading_directly(self._link.reactor, self.transport)
        super().connectionLost(reason)

    def subscribe(self, channels: Sequence[str]) -> Deferred[Any]:
        """SUBSCRIBE to ``channels``; fires once every channel is acknowledged."""
        self._acks_pending += len(channels)
        return self.execute_command("SUBSCRIBE", *channels)

    def _not_redis(self, reason: str) -> None:
        self.drop_reason = reason
        self._link._log.error("Redis {role}: {reason}; reconnecting", role=self._link.role, reason=reason)
        self.transport.abortConnection()

    def _failed(self, count: int) -> None:
        self._link._log.failure("{count} bus message(s) could not be handled", count=count)

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            if reply[0] == b"subscribe":
                self._acks_pending -= 1
                if self._acks_pending > 0:
                    return  # the SUBSCRIBE waiter gets the last acknowledgement only
        super().replyReceived(reply)


class _Subscriber(RedisLink):
    """The subscriber connection: SUBSCRIBEs to every channel after each connect."""

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        password: str | None,
        channels: Sequence[str],
        on_messages: Callable[[Messages], None],
        retry_policy: RetryPolicy | None,
        reply_timeout: float | None,
        ping_interval: float | None,
    ) -> None:
        # pub/sub ignores the database number, so no SELECT
        super().__init__(reactor, endpoint, password, 0, retry_policy, reply_timeout, "bus subscriber",
                         ping_interval=ping_interval)
        self._channels = list(channels)
        self._on_messages = on_messages

    def _build(self) -> RedisConnection:
        return _SubscriberConnection(self, self._reply_timeout, self._on_messages)

    def _setup(self, conn: RedisConnection) -> Deferred[Any]:
        assert isinstance(conn, _SubscriberConnection)
        setup = super()._setup(conn)
        setup.addCallback(lambda _: conn.subscribe(self._channels))
        return setup


@implementer(IBus)
class RedisBus(service.MultiService):
    """IBus on Redis pub/sub: a subscriber connection on every configured channel plus a publisher connection.

    ``topics`` maps logical topic -> Redis channel. Listeners get ``(topic, payload: bytes)`` in the order Redis
    delivers; a listener's exception is logged and never reaches the connection or the other listeners.
    ``ping_interval`` (seconds, None to disable) PINGs both connections: a stalled Redis is reported in ``state``
    within ``ping_interval`` + 2 s, a silently dead peer dropped within ``ping_interval + reply_timeout``.
    ``batch``: its ``begin()`` and ``end()`` are called around the delivery of the messages of one read from
    Redis when there are several (``wsgw.web.outbound.WriteBatch``).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        topics: Mapping[str, str],
        password: str | None = None,
        db: int = 0,
        *,
        retry_policy: RetryPolicy | None = None,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        batch: Batch | None = None,
    ) -> None:
        super().__init__()
        self._topics = check_topics(topics)
        self._deliveries = Deliveries({channel.encode(): topic for topic, channel in self._topics.items()}, batch)
        self._publisher = RedisCommands(
            reactor, endpoint, password, db, retry_policy=retry_policy, reply_timeout=reply_timeout,
            role="bus publisher", ping_interval=ping_interval,
        )
        self._subscriber = _Subscriber(
            reactor, endpoint, password, list(self._topics.values()), self._deliveries.messages,
            retry_policy, reply_timeout, ping_interval,
        )
        self._publisher.setServiceParent(self)
        self._subscriber.setServiceParent(self)

    @property
    def topics(self) -> Mapping[str, str]:
        """The topic -> channel map (a copy)."""
        return dict(self._topics)

    @property
    def connected(self) -> bool:
        """True while subscribed to every channel and the publisher is connected."""
        return self._subscriber.connected and self._publisher.connected

    @property
    def links(self) -> tuple[RedisLink, RedisLink]:
        """The subscriber and publisher connections (for metrics: ``role``, ``connected``, ``reconnects``)."""
        return (self._subscriber, self._publisher)

    @property
    def state(self) -> str:
        """'connected', 'stalled' (connected, but Redis has not answered a PING for seconds), 'connecting',
        'subscriber down', 'publisher down' or 'stopped', with the last problem."""
        if not self.running:
            return "stopped"
        sub, pub = self._subscriber.connected, self._publisher.connected
        if sub and pub:
            stalled = [f"{link.role}: {link.stalled}" for link in self.links if link.stalled]
            return f"stalled ({', '.join(stalled)})" if stalled else "connected"
        state = "connecting" if not sub and not pub else "subscriber down" if not sub else "publisher down"
        problem = self._subscriber.problem or self._publisher.problem
        return state if problem is None else f"{state} ({problem})"

    def listen(self, callback: Listener) -> None:
        """Deliver each message as ``callback(topic, payload)``; the messages of one read go to
        ``callback.batch([(topic, payload), ...])`` instead when ``callback`` is the only listener and has a
        ``batch`` (which must handle them in order as that many calls would, isolating each one's failure:
        ``wsgw.dispatch.Dispatcher.batch``, ``wsgw.web.timing.TimedListener.batch``)."""
        self._deliveries.listen(callback)

    def publish(self, topic: str, payload: bytes) -> Deferred[Any]:
        """PUBLISH ``payload`` on ``topic``'s channel; fires with the receiver count once Redis answered, fails with
        ConnectionError at once while disconnected. ValueError for an unknown topic, TypeError for non-bytes."""
        channel = check_publish(self._topics, topic, payload)
        return self._publisher.execute_command("PUBLISH", channel, payload)

    def whenSubscribed(self) -> Deferred[Any]:
        """Fires once the subscriber is subscribed to every channel (now, or after the next (re)connect)."""
        return self._subscriber.whenConnected()

    def whenConnected(self) -> Deferred[Any]:
        """Fires once subscribed and the publisher is connected (CancelledError if the bus stops first)."""
        return ensureDeferred(self._both_connected())

    async def _both_connected(self) -> RedisBus:
        while not self.connected:
            await self._subscriber.whenConnected()
            await self._publisher.whenConnected()
        return self
