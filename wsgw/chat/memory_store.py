"""The embedded chat store (``IChatStore`` in one process's memory), used when no Redis is configured.

Every call completes synchronously. Presence is kept per room as ``login -> last
seen`` (the caller's clock seconds), with each presence's deadline in a heap, as
``wsgw.chat.redis_store`` keeps them in a sorted set.
"""

from __future__ import annotations

import copy
import heapq
import math
import uuid as uuidlib
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from wsgw.chat.model import (
    ChatStoreError,
    Message,
    NoSuchMessage,
    NoSuchRoom,
    NotAuthor,
    Room,
    TooManyEdits,
    TooManyRooms,
    index_key,
    stamp,
)
from wsgw.interfaces import IChatStore


@implementer(IChatStore)
class MemoryChatStore:
    """The embedded store: plain dicts in this process; every call completes synchronously."""

    def __init__(self) -> None:
        self._index: dict[str, str] = {}
        self._rooms: dict[str, Room] = {}  # without Users
        self._users: dict[str, dict[str, float]] = {}
        self._messages: dict[str, list[Message]] = {}
        self._created: dict[str, int] = {}  # login -> rooms it created
        self._until: dict[tuple[str, str], float] = {}  # (room uuid, login) -> presence deadline
        # the deadlines, earliest first; an entry whose deadline moved or went is stale and skipped when
        # popped; rebuilt from _until when the stale ones outnumber the live ones, so it stays O(presences)
        self._deadlines: list[tuple[float, str, str]] = []

    def _room(self, room_uuid: str) -> Room:
        room = dict(self._rooms[room_uuid])
        room["Users"] = sorted(self._users[room_uuid])
        return room

    def find_room(self, type: str, type_object: str) -> Deferred[Any]:
        room_uuid = self._index.get(index_key(type, type_object))
        return succeed(None if room_uuid is None else self._room(room_uuid))

    def get_room(self, room_uuid: str) -> Deferred[Any]:
        return succeed(self._room(room_uuid) if room_uuid in self._rooms else None)

    def find_or_create_room(self, type: str, type_object: str, label: str, now: float, creator: str = "",
                            max_created: int = 0) -> Deferred[Any]:
        key = index_key(type, type_object)
        created = key not in self._index
        if created and creator:
            if max_created and self._created.get(creator, 0) >= max_created:
                return fail(TooManyRooms(creator))
            self._created[creator] = self._created.get(creator, 0) + 1
        if created:
            room_uuid = str(uuidlib.uuid4())
            self._index[key] = room_uuid
            self._rooms[room_uuid] = {
                "Uuid": room_uuid, "Type": type, "RoomTypeObject": type_object,
                "RoomLabel": label, "LastUpdated": stamp(now),
            }
            self._users[room_uuid] = {}
            self._messages[room_uuid] = []
        return succeed((self._room(self._index[key]), created))

    def touch_user(self, room_uuid: str, login: str, now: float, until: float) -> Deferred[Any]:
        if room_uuid not in self._rooms:
            return succeed((None, False))
        users = self._users[room_uuid]
        changed = login not in users
        users[login] = max(now, users.get(login, now))
        key = (room_uuid, login)
        if until > self._until.get(key, -math.inf):
            self._until[key] = until
            heapq.heappush(self._deadlines, (until, room_uuid, login))
            if len(self._deadlines) > 2 * len(self._until) + 64:
                self._deadlines = [(due, room, user) for (room, user), due in self._until.items()]
                heapq.heapify(self._deadlines)
        if changed:
            self._rooms[room_uuid]["LastUpdated"] = stamp(now)
        return succeed((self._room(room_uuid), changed))

    def remove_user(self, room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred[Any]:
        if room_uuid not in self._rooms:
            return succeed((None, False))
        users = self._users[room_uuid]
        seen = users.get(login)
        changed = seen is not None and (idle_since is None or seen <= idle_since)
        if changed:
            del users[login]
            self._until.pop((room_uuid, login), None)
            self._rooms[room_uuid]["LastUpdated"] = stamp(now)
        return succeed((self._room(room_uuid), changed))

    def expire_users(self, now: float, limit: int) -> Deferred[Any]:
        changed: dict[str, None] = {}  # room uuids in the order their Users changed
        count = 0
        while self._deadlines and self._deadlines[0][0] <= now and count < limit:
            due, room_uuid, login = heapq.heappop(self._deadlines)
            if self._until.get((room_uuid, login)) != due:
                continue  # stale: refreshed or removed since
            del self._until[(room_uuid, login)]
            count += 1
            users = self._users.get(room_uuid)
            if users is not None and users.pop(login, None) is not None:
                self._rooms[room_uuid]["LastUpdated"] = stamp(now)
                changed[room_uuid] = None
        return succeed(([self._room(u) for u in changed if u in self._rooms], count))

    def post_message(self, message: Message, cap: int) -> Deferred[Any]:
        history = self._messages.get(message["RoomUuid"])
        if history is None:
            return fail(NoSuchRoom(message["RoomUuid"]))
        if any(kept["Uuid"] == message["Uuid"] for kept in history):
            return succeed(None)  # posted already: idempotent on the Uuid (issue 11, section 5)
        history.append(copy.deepcopy(message))
        if len(history) > cap:
            del history[: len(history) - cap]
        return succeed(None)

    def _find(self, room_uuid: str, message_uuid: str, author: str) -> tuple[list[Message], int]:
        history = self._messages.get(room_uuid, [])
        for i, message in enumerate(history):
            if message["Uuid"] == message_uuid:
                if message.get("Author") != author:
                    raise NotAuthor(message_uuid)
                return history, i
        raise NoSuchMessage(message_uuid)

    def get_message(self, room_uuid: str, message_uuid: str) -> Deferred[Any]:
        for message in self._messages.get(room_uuid, []):
            if message["Uuid"] == message_uuid:
                return succeed(copy.deepcopy(message))
        return succeed(None)

    def edit_message(self, room_uuid: str, message_uuid: str, author: str, text: str, updated: str,
                     max_edits: int = 0) -> Deferred[Any]:
        try:
            history, i = self._find(room_uuid, message_uuid, author)
        except ChatStoreError as e:
            return fail(e)
        message = history[i]
        if message.get("Message") == text:
            return succeed(copy.deepcopy(message))  # no change: a repeated edit adds no Activity item
        activity = message.get("Activity")
        items = activity.get("items") if isinstance(activity, dict) else None
        if max_edits and isinstance(items, list) and len(items) >= max_edits:
            return fail(TooManyEdits(message_uuid))
        if not isinstance(activity, dict):
            activity = message["Activity"] = {}
        if not isinstance(items, list):
            items = activity["items"] = []
        items.append({"markdown": message.get("Message", ""), "updated": updated})
        message["Message"] = text
        return succeed(copy.deepcopy(message))

    def delete_message(self, room_uuid: str, message_uuid: str, author: str) -> Deferred[Any]:
        try:
            history, i = self._find(room_uuid, message_uuid, author)
        except ChatStoreError as e:
            return fail(e)
        return succeed(history.pop(i))

    def page(self, room_uuid: str, offset: int, limit: int) -> Deferred[Any]:
        history = self._messages.get(room_uuid, [])
        end = max(len(history) - offset, 0)
        start = max(end - limit, 0) if limit > 0 else 0
        return succeed(copy.deepcopy(history[start:end]))
