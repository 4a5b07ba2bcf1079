"""``RedisBus``: the event bus (``IBus``) on Redis pub/sub, for production and for several gateway instances.

A subscriber connection SUBSCRIBEs to every configured channel after each
(re)connect; a publisher connection PUBLISHes. Both are
``wsgw.redis.connection.RedisLink``s, which PING to notice a stalled or dead Redis.

txredisapi's ``SubscriberProtocol`` hands the 2nd..Nth SUBSCRIBE
acknowledgement to whichever command waits next (e.g. a PING); the subscriber
connection here counts the acknowledgements, and never converts a message
payload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from wsgw.bus import check_publish, check_topics, deliver
from wsgw.interfaces import IBus
from wsgw.redis.connection import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_REPLY_TIMEOUT,
    RedisCommands,
    RedisConnection,
    RedisLink,
    RetryPolicy,
)

Listener = Callable[[str, bytes], Any]


class _SubscriberConnection(RedisConnection):
    """A connection in subscribed mode: messages go to ``on_message(channel, payload)``, other replies to waiters."""

    def __init__(self, link: RedisLink, reply_timeout: float | None, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(link, reply_timeout)
        self._on_message = on_message
        self._acks_pending = 0

    def subscribe(self, channels: Sequence[str]) -> Deferred[Any]:
        """SUBSCRIBE to ``channels``; fires once every channel is acknowledged."""
        self._acks_pending += len(channels)
        return self.execute_command("SUBSCRIBE", *channels)

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                try:
                    self._on_message(reply[1], reply[2])
                except Exception:  # noqa: BLE001 - a handling bug must not break the connection
                    self._link._log.failure("bus message on {channel!r} could not be handled", channel=reply[1])
                return
            if kind == b"subscribe":
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
        on_message: Callable[[bytes, bytes], None],
        retry_policy: RetryPolicy | None,
        reply_timeout: float | None,
        ping_interval: float | None,
    ) -> None:
        # pub/sub ignores the database number, so no SELECT
        super().__init__(reactor, endpoint, password, 0, retry_policy, reply_timeout, "bus subscriber",
                         ping_interval=ping_interval)
        self._channels = list(channels)
        self._on_message = on_message

    def _build(self) -> RedisConnection:
        return _SubscriberConnection(self, self._reply_timeout, self._on_message)

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
    ) -> None:
        super().__init__()
        self._topics = check_topics(topics)
        self._topic_by_channel = {channel.encode(): topic for topic, channel in self._topics.items()}
        self._listeners: list[Listener] = []
        self._publisher = RedisCommands(
            reactor, endpoint, password, db, retry_policy=retry_policy, reply_timeout=reply_timeout,
            role="bus publisher", ping_interval=ping_interval,
        )
        self._subscriber = _Subscriber(
            reactor, endpoint, password, list(self._topics.values()), self._message,
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
        self._listeners.append(callback)

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

    def _message(self, channel: bytes, payload: bytes) -> None:
        topic = self._topic_by_channel.get(channel)
        if topic is None:
            self._log.warn("bus message on unexpected channel {channel!r} dropped", channel=channel)
            return
        deliver(self._listeners, topic, payload, self._log)
