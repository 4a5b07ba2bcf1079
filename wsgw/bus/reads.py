"""The bus subscriber's reads from Redis, one compiled call a read (issue 13, goal 2; bench/RESULTS.md "The
reactor turn"): ``MessageReads`` parses (hiredis) and splits what Redis sends, ``Deliveries`` hands the messages of
one read to the listeners. ``wsgw.bus.redis`` (module docstring) says what they do; this module only holds the
per-read code, compiled by mypyc, so that a read is one native call from the socket to the rules
(``wsgw.internals.loop.recv`` → ``MessageReads.data_received`` → ``Deliveries.messages`` → the listener's
``batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
from twisted.logger import Logger
from txredisapi import InvalidData, ResponseError  # type: ignore[import-untyped]

from wsgw.bus import deliver

Messages = list[tuple[bytes, bytes]]
"""The ``(channel, payload)`` of every complete pub/sub message of one read, in the order Redis sent them."""


class MessageReads:
    """What a subscriber connection (``conn``: ``received_at``, ``replyReceived``) does with each read:
    ``data_received(data)`` sets ``conn.received_at`` to ``seconds()``, parses, and hands each run of complete
    ``message`` replies to ``messages(batch)`` and each other reply to ``conn.replyReceived`` (a status reply as
    ``str``, as txredisapi's parser gives it), in the order Redis sent them. Bytes that are not RESP, or a
    ``message`` whose channel or payload is not a bulk string, call ``invalid(reason)`` (after the messages before
    them) and end the read. An exception out of ``messages`` is ``failed(count)``'s to log; the read goes on."""

    def __init__(self, conn: Any, seconds: Callable[[], float], messages: Callable[[Messages], None],
                 invalid: Callable[[str], None], failed: Callable[[int], None]) -> None:
        self._conn = conn
        self._seconds = seconds
        self._messages = messages
        self._invalid = invalid
        self._failed = failed
        self._reader = hiredis.Reader(protocolError=InvalidData, replyError=ResponseError)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        conn.received_at = self._seconds()
        reader = self._reader
        reader.feed(data)
        batch: Messages = []
        try:
            reply = reader.gets()
            while reply is not False:
                if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                    channel, payload = reply[1], reply[2]
                    if type(channel) is not bytes or type(payload) is not bytes:  # not Redis: a fake server, a proxy
                        raise InvalidData("a message whose channel or payload is not a bulk string")
                    batch.append((channel, payload))
                else:
                    if batch:  # what came before the reply is handled before it
                        self._hand_over(batch)
                        batch = []
                    # (only status replies come alone as bytes on this connection: AUTH's OK, PONG before SUBSCRIBE)
                    conn.replyReceived(reply.decode("utf-8", "replace") if type(reply) is bytes else reply)
                reply = reader.gets()
        except InvalidData as e:
            if batch:
                self._hand_over(batch)
            self._invalid(f"not a Redis reply: {e}")
            return
        if batch:
            self._hand_over(batch)

    def _hand_over(self, batch: Messages) -> None:
        try:
            self._messages(batch)
        except Exception:  # noqa: BLE001 - a handling bug must not break the connection
            self._failed(len(batch))


class Deliveries:
    """The messages of each read to the listeners (``RedisBus.listen``): to the only listener's ``batch`` when it
    has one, as ``(topic, payload)`` pairs in one call, else to every listener message by message
    (``wsgw.bus.deliver``); several messages are delivered between ``batch.begin()`` and ``batch.end()`` when a
    ``batch`` is given. A message on a channel of no topic is logged and dropped."""

    _log = Logger(namespace="wsgw.bus.redis.RedisBus")  # named: compiled (mypyc), Logger() finds no module

    def __init__(self, topic_by_channel: dict[bytes, str], batch: Any) -> None:
        self._topic_by_channel = topic_by_channel
        self._batch = batch
        self.listeners: list[Callable[[str, bytes], Any]] = []
        self._single: Callable[[list[tuple[str, bytes]]], object] | None = None

    def listen(self, callback: Callable[[str, bytes], Any]) -> None:
        self.listeners.append(callback)
        self._single = getattr(callback, "batch", None) if len(self.listeners) == 1 else None

    def messages(self, messages: Messages) -> None:
        """The messages of one read, in order."""
        batch = self._batch
        if batch is None or len(messages) == 1:
            self._deliver(messages)
            return
        batch.begin()
        try:
            self._deliver(messages)
        finally:
            batch.end()

    def _deliver(self, messages: Messages) -> None:
        single = self._single
        topic_by_channel = self._topic_by_channel
        if single is None:
            for channel, payload in messages:
                topic = topic_by_channel.get(channel)
                if topic is None:
                    self._unexpected(channel)
                else:
                    deliver(self.listeners, topic, payload, self._log)
            return
        events: list[tuple[str, bytes]] = []
        for channel, payload in messages:
            topic = topic_by_channel.get(channel)
            if topic is None:
                self._unexpected(channel)
            else:
                events.append((topic, payload))
        try:
            single(events)
        except Exception:  # noqa: BLE001 - isolate a broken listener, as wsgw.bus.deliver does
            self._log.failure("bus listener {listener!r} failed on a batch of {count} message(s)",
                              listener=self.listeners[0], count=len(events))

    def _unexpected(self, channel: bytes) -> None:
        self._log.warn("bus message on unexpected channel {channel!r} dropped", channel=channel)
