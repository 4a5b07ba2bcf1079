"""A bound on the chat store calls in flight on one instance (issue 11 §4: pending store calls are bounded).

``BoundedStore`` wraps the instance's ``IChatStore``; every call of every
``IChatStore`` method goes through it (a method added to the interface must be
added here too: mypy's zope plugin says so). While ``max_calls`` calls are in flight
(Redis slow or frozen), one more fails at once with ``StoreBusy`` before it
reaches the store, so it changed nothing: a client frame is answered "the chat
store is busy, try again later"; a background presence removal is left to the
presence sweep, as when the store is unavailable.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from wsgw.chat.model import StoreBusy
from wsgw.interfaces import IChatStore


@implementer(IChatStore)
class BoundedStore:
    """``store`` with at most ``max_calls`` calls in flight (0 = no bound). ``in_flight``: calls now;
    ``refused``: calls refused busy since the start (read by /metrics)."""

    def __init__(self, store: Any, max_calls: int) -> None:
        self._store = store
        self._max = max_calls
        self.in_flight = 0
        self.refused = 0

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self._max and self.in_flight >= self._max:
            self.refused += 1
            return fail(StoreBusy(f"{self._max} store calls in flight"))
        self.in_flight += 1
        d: Deferred[Any] = getattr(self._store, name)(*args, **kwargs)
        return d.addBoth(self._done)

    def _done(self, result: object) -> object:
        self.in_flight -= 1
        return result

    # IChatStore: each method is the wrapped store's, within the bound

    def find_room(self, type: str, type_object: str) -> Deferred[Any]:
        return self._call("find_room", type, type_object)

    def get_room(self, room_uuid: str) -> Deferred[Any]:
        return self._call("get_room", room_uuid)

    def find_or_create_room(self, type: str, type_object: str, label: str, now: float, creator: str = "",
                            max_created: int = 0) -> Deferred[Any]:
        return self._call("find_or_create_room", type, type_object, label, now, creator, max_created)

    def touch_user(self, room_uuid: str, login: str, now: float, until: float) -> Deferred[Any]:
        return self._call("touch_user", room_uuid, login, now, until)

    def remove_user(self, room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred[Any]:
        return self._call("remove_user", room_uuid, login, now, idle_since)

    def expire_users(self, now: float, limit: int) -> Deferred[Any]:
        return self._call("expire_users", now, limit)

    def post_message(self, message: dict[str, Any], cap: int) -> Deferred[Any]:
        return self._call("post_message", message, cap)

    def get_message(self, room_uuid: str, message_uuid: str) -> Deferred[Any]:
        return self._call("get_message", room_uuid, message_uuid)

    def edit_message(self, room_uuid: str, message_uuid: str, author: str, text: str, updated: str,
                     max_edits: int = 0) -> Deferred[Any]:
        return self._call("edit_message", room_uuid, message_uuid, author, text, updated, max_edits)

    def delete_message(self, room_uuid: str, message_uuid: str, author: str) -> Deferred[Any]:
        return self._call("delete_message", room_uuid, message_uuid, author)

    def page(self, room_uuid: str, offset: int, limit: int) -> Deferred[Any]:
        return self._call("page", room_uuid, offset, limit)
