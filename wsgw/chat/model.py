"""The chat's data (PROTOCOL.md §5.1, §5.3, §5.4): rooms and messages, the store's errors, chat events on the bus.

Rooms and messages are plain JSON-ready dicts in their wire shapes: a room is
``{"Uuid","Type","RoomTypeObject","RoomLabel","Users","LastUpdated"}`` (``Users``
sorted), a message ``{"Uuid","RoomUuid","Message","Author","Timestamp","Activity"?}``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from wsgw.cells import ROOM_TYPE
from wsgw.frames import MalformedEvent, encode, field

Room = dict[str, Any]
Message = dict[str, Any]

ROOM_TYPES = frozenset({"GLOBAL", "WORKSPACE", "USER", "NODE"})


class ChatStoreError(Exception):
    """A store operation that cannot be done as asked."""


class StoreUnavailable(ChatStoreError):
    """The store cannot be reached right now (Redis down or not answering); nothing was changed by this call."""


class StoreBusy(StoreUnavailable):
    """This instance has as many store calls in flight as ``[chat] max_store_calls`` allows; this one was not
    made (nothing changed)."""


class OutcomeUnknown(ChatStoreError):
    """A change was sent to the store but no answer came (a timeout, a dropped connection): it may have been
    applied, or may still be, or not. ``outcome`` (a Deferred) fires once that is known, with what the call
    would have fired, or fails with the error it would have failed with (NoSuchRoom, ...): the store sends
    the change again, under the same id (every change is idempotent on it), until the store answers; it fails
    with CancelledError when the store is stopped first (issue 11, section 5)."""

    def __init__(self, reason: str, outcome: Deferred[Any]) -> None:
        super().__init__(reason)
        self.outcome = outcome


class NoSuchRoom(ChatStoreError):
    """The room does not exist."""


class NoSuchMessage(ChatStoreError):
    """The message does not exist in that room."""


class NotAuthor(ChatStoreError):
    """The message exists but was written by someone else."""


class TooManyEdits(ChatStoreError):
    """The message was edited as many times as it may be (``[chat] max_edits_per_message``); nothing changed."""


class TooManyRooms(ChatStoreError):
    """The login has created as many rooms as it may (``[chat] max_rooms_per_user``); nothing was created."""


def index_key(type: str, type_object: str) -> str:
    """The store's key of a room's ``(Type, RoomTypeObject)``; ``Type`` is an enum name and never holds ``:``."""
    return type + ":" + type_object


def stamp(now: float) -> str:
    """Unix seconds as the protobuf-JSON int64 string (``LastUpdated``, ``Timestamp``)."""
    return str(int(now))


def room_update(room: Room) -> bytes:
    """The ``{"@type":"ROOM_UPDATE","Room":room}`` frame (§5.3)."""
    return encode({"@type": "ROOM_UPDATE", "Room": room})


def validate(event: object) -> tuple[str, bytes]:
    """Check a chat event's shape (§5.4); return its room's uuid and the frame the room's sockets get:
    the message, ``DELETE_MSG`` for ``"Details":"DELETE"``, or ``ROOM_UPDATE`` for a ``Room`` (its ``Type``
    a chat.RoomType name, also when a Go service wrote the number: the frontend keys rooms by the name).

    Raises MalformedEvent naming the offending field.
    """
    if not isinstance(event, dict):
        raise MalformedEvent("a chat event must be an object")
    message = field(event, "Message", dict)
    if message is not None:
        room_uuid: str = field(message, "RoomUuid", str)
        if not room_uuid:
            raise MalformedEvent("Message.RoomUuid must be a non-empty string")
        if field(event, "Details", str, "") == "DELETE":
            return room_uuid, encode({"@type": "DELETE_MSG", "Message": message})
        return room_uuid, encode(message)
    room = field(event, "Room", dict)
    if room is None:
        raise MalformedEvent("a chat event needs a Message or a Room")
    room_uuid = field(room, "Uuid", str)
    if not room_uuid:
        raise MalformedEvent("Room.Uuid must be a non-empty string")
    kind = room.get("Type")
    if kind is not None:
        named = ROOM_TYPE.name(kind, "Room.Type")
        if named is not kind:
            room = {**room, "Type": named}
    return room_uuid, room_update(room)
