"""The event bus behind ``wsgw.interfaces.IBus``: Redis pub/sub (``redis.RedisBus``) or in process (``memory.MemoryBus``).

Both take a topic map (logical topic -> channel name) and deliver
``callback(topic, payload: bytes)`` to every listener. ``check_topics``
validates such a map once, for both.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger, LogLevel

_log = Logger()


def check_topics(topics: Mapping[str, str]) -> dict[str, str]:
    """A validated copy of ``topics``: non-empty string names, one channel per topic, no channel shared.

    Raises ValueError naming the offending entry.
    """
    if not topics:
        raise ValueError("the bus needs at least one topic")
    by_channel: dict[str, str] = {}
    for topic, channel in topics.items():
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"bus topic name must be a non-empty string, got {topic!r}")
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"bus channel for topic {topic!r} must be a non-empty string, got {channel!r}")
        if channel in by_channel:
            raise ValueError(f"bus channel {channel!r} is used by both {by_channel[channel]!r} and {topic!r}")
        by_channel[channel] = topic
    return dict(topics)


def check_publish(topics: Mapping[str, str], topic: str, payload: bytes) -> str:
    """The channel of ``topic``; ValueError for an unknown topic, TypeError for a payload that is not bytes."""
    channel = topics.get(topic)
    if channel is None:
        raise ValueError(f"unknown bus topic {topic!r}")
    if not isinstance(payload, bytes):
        raise TypeError(f"bus payload must be bytes, got {type(payload).__name__}")
    return channel


def deliver(listeners: list, topic: str, payload: bytes, log: Logger = _log) -> None:
    """Call every listener with ``(topic, payload)``; a listener's exception is logged with its traceback and
    never reaches the others (nor a failing Deferred it returns)."""
    for listener in listeners:
        try:
            result = listener(topic, payload)
        except Exception:  # noqa: BLE001 - isolate a broken listener
            log.failure(
                "bus listener {listener!r} failed on topic {topic}", level=LogLevel.error, listener=listener, topic=topic
            )
            continue
        add_errback = getattr(result, "addErrback", None)
        if add_errback is not None:
            add_errback(
                lambda f, listener=listener: log.failure(
                    "bus listener {listener!r} failed on topic {topic}", f, LogLevel.error, listener=listener,
                    topic=topic,
                )
            )
