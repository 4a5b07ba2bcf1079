"""Topic -> handler routing for bus messages (PROTOCOL.md §4): decode once, isolate each handler's failures, count.

Events are decoded by ``wsgw.frames.decode_event``: orjson where it gives exactly what
the standard library's ``json.loads`` gives, several times faster (issue 13: a
bus event's JSON decode was ~9% of the per-event profile), ``json.loads`` for a
payload that might hold what orjson reads otherwise (integers past 64 bits,
nesting the standard parser refuses with RecursionError) or refuses (lone
surrogates, UTF-16, bad JSON), whose answer or error stands; NaN, Infinity and
1e400, which no frame can carry on, are not JSON (``decode_event``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.logger import Logger

from wsgw.frames import MalformedEvent
from wsgw.frames import decode_event as loads


class TopicHandler(Protocol):
    """What the dispatcher calls for each decoded event of a topic; raises MalformedEvent for a bad shape."""

    def handle(self, event: dict[str, Any]) -> None: ...


class Dispatcher:
    """Delivers ``(topic, payload)`` from the bus to the topic's handler.

    A payload that is not a JSON object, is too large, or that its handler
    finds malformed, is logged, counted and dropped. A handler that raises
    anything else is a bug: it is logged with its traceback and counted, and
    every other topic and session goes on.
    """

    _log = Logger(namespace=f"{__name__}.Dispatcher")  # named: compiled (mypyc), Logger() finds no module

    def __init__(self, handlers: Mapping[str, TopicHandler], max_event_bytes: int = 1 << 20) -> None:
        self._handlers = dict(handlers)
        self._max = max_event_bytes
        # a plain dict, not a Counter: compiled, ``received[topic] = ...`` on a dict is one C call, on a Counter (a
        # Python subclass) a slot lookup and a wrapper call, ~1,500 instructions an event (callgrind, storm_ir floor)
        self.received: dict[str, int] = dict.fromkeys(self._handlers, 0)
        self.malformed: Counter[str] = Counter()
        self.crashed: Counter[str] = Counter()

    def __call__(self, topic: str, payload: bytes) -> None:
        """One bus message: ``payload`` is the event's JSON text, ``topic`` its logical topic."""
        self.batch(((topic, payload),))

    def batch(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Every ``(topic, payload)`` of ``messages`` in order, as that many calls would (one bus read at a time:
        ``wsgw.bus.redis.RedisBus``)."""
        self.each(messages, None)

    def each(self, messages: Iterable[tuple[str, bytes]], after: Callable[[str], object] | None) -> None:
        """Handle each ``(topic, payload)`` in order, calling ``after(topic)`` once it is handled, when given
        (``TimedListener`` times each event of a read so, with one clock read per event; a call, not a generator's
        resumption: ~2,000 instructions fewer an event, callgrind). Each event's failure is caught here: nothing
        raises for an event, whatever its handler does; an exception out of ``after`` is the caller's."""
        received, malformed, handlers, limit = self.received, self.malformed, self._handlers, self._max
        for topic, payload in messages:
            received[topic] = received.get(topic, 0) + 1
            handler = handlers.get(topic)
            if handler is not None:
                try:
                    if len(payload) > limit:
                        raise MalformedEvent(f"event of {len(payload)} bytes is over the {limit} bytes limit")
                    try:
                        event = loads(payload)
                    except (ValueError, RecursionError) as e:
                        raise MalformedEvent(f"not JSON: {str(e)[:80]}") from None
                    if type(event) is not dict:  # json.loads and orjson make plain dicts
                        raise MalformedEvent("the event is not a JSON object")
                    handler.handle(event)  # looked up each time, as a call would (a handler may be replaced)
                except MalformedEvent as e:
                    malformed[topic] += 1
                    self._log.warn("dropped a malformed event on {topic}: {reason}", topic=topic, reason=str(e))
                except Exception:
                    self.crashed[topic] += 1
                    self._log.failure("the {topic} handler failed on an event", topic=topic)
            if after is not None:
                after(topic)
