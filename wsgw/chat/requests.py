"""Reading client chat frames (PROTOCOL.md §5.2): fields, paging, the room a frame names, who may join.

A frame that cannot be acted on raises ``Refused`` with a reason naming the
action; the service answers it with an error frame and the socket stays open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeGuard

import attrs

from wsgw.access import Access
from wsgw.cells import ROOM_TYPE
from wsgw.chat.model import ROOM_TYPES, Message
from wsgw.frames import MalformedEvent, encode

MAX_FIELD = 512  # characters of a room type object, label, or uuid
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: valid in a JSON escape, not in UTF-8 (nor in Redis)

Frame = dict[str, Any]
JoinedRooms = Mapping[str, tuple[str, str]]  # joined room uuid -> (Type, RoomTypeObject)


@attrs.frozen
class ForRoom:
    """What a chat frame of a room was produced for (``wsgw.flow.Scope``): the sessions that may join it."""

    type: str
    type_object: str

    def admits(self, session: Any) -> bool:
        return session.access is not None and may_join(session.access, self.type, self.type_object)


class Refused(Exception):
    """A frame refused with a reason that names the action; answered with an error frame."""


class Limited(Refused):
    """A frame refused by a bound (``limit``: its name in ``wsgw_chat_limits_refused_total``)."""

    def __init__(self, reason: str, limit: str) -> None:
        super().__init__(reason)
        self.limit = limit


def is_field(value: object) -> TypeGuard[str]:
    """Whether ``value`` can name a room or a message: a string of at most ``MAX_FIELD`` characters that UTF-8
    can hold (a lone surrogate cannot be stored)."""
    return isinstance(value, str) and len(value) <= MAX_FIELD and not _SURROGATE.search(value)


def show(value: object) -> str:
    """``repr(value)``, cut to 40 characters, for quoting a client's value in an error."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def may_join(access: Access, type: str, type_object: str) -> bool:
    """§5.2: WORKSPACE rooms for members of the workspace, USER rooms for that user (login or
    sub), GLOBAL and NODE rooms for any profile but ``anon``."""
    if type == "WORKSPACE":
        return any(ws.uuid == type_object for ws in access.workspaces)
    if type == "USER":
        return type_object in (access.login, access.sub)
    return access.profile != "anon"


def room_spec(frame: Frame, action: str) -> tuple[str, str, str]:
    """``(Type, RoomTypeObject, RoomLabel)`` of the frame's Room; Type absent means GLOBAL, and may be a
    chat.RoomType name or number (``wsgw.cells``), but not ANY, which names no room."""
    room = frame.get("Room")
    if room is None:
        raise Refused(f"{action}: missing Room")
    if not isinstance(room, dict):
        raise Refused(f"{action}: Room must be an object")
    type = room.get("Type")
    if type is None or type == "":
        type = "GLOBAL"
    try:
        type = ROOM_TYPE.name(type, "Room.Type")
    except MalformedEvent:
        type = None
    if type not in ROOM_TYPES:
        raise Refused(f"{action}: unknown Room.Type {show(room.get('Type'))}")
    type_object = room.get("RoomTypeObject")
    type_object = "" if type_object is None else type_object
    label = room.get("RoomLabel")
    label = "" if label is None else label
    if not is_field(type_object):
        raise Refused(f"{action}: Room.RoomTypeObject must be a string of at most {MAX_FIELD} characters")
    if not isinstance(label, str) or len(label) > MAX_FIELD:
        raise Refused(f"{action}: Room.RoomLabel must be a string of at most {MAX_FIELD} characters")
    if type != "GLOBAL" and not type_object:
        raise Refused(f"{action}: missing Room.RoomTypeObject")
    return type, type_object, label


def room_uuid_of(frame: Frame, action: str) -> str | None:
    """``Room.Uuid`` when the frame names its room that way (None when it names it by type and object)."""
    room = frame.get("Room")
    if not isinstance(room, dict) or not room.get("Uuid"):
        return None
    room_uuid = room["Uuid"]
    if not is_field(room_uuid):
        raise Refused(f"{action}: Room.Uuid must be a string of at most {MAX_FIELD} characters")
    return room_uuid


def message_of(frame: Frame, action: str) -> Message:
    """The frame's ``Message`` object."""
    message = frame.get("Message")
    if message is None:
        raise Refused(f"{action}: missing Message")
    if not isinstance(message, dict):
        raise Refused(f"{action}: Message must be an object")
    return message


def joined_uuid(rooms: JoinedRooms, type: str, type_object: str) -> str | None:
    """The uuid of the joined room ``(type, type_object)``, if joined."""
    for room_uuid, spec in rooms.items():
        if spec == (type, type_object):
            return room_uuid
    return None


def joined_room(rooms: JoinedRooms, frame: Frame, action: str) -> str:
    """The joined room a frame names, by ``Message.RoomUuid``, ``Room.Uuid`` or ``Room`` type and object."""
    message = frame.get("Message")
    room = frame.get("Room")
    room_uuid: object = None
    if isinstance(message, dict) and message.get("RoomUuid"):
        room_uuid = message["RoomUuid"]
    elif isinstance(room, dict) and room.get("Uuid"):
        room_uuid = room["Uuid"]
    elif room is not None:
        room_uuid = joined_uuid(rooms, *room_spec(frame, action)[:2])
    else:
        raise Refused(f"{action}: missing Message.RoomUuid or Room")
    if not isinstance(room_uuid, str) or room_uuid not in rooms:
        raise Refused(f"{action}: room not joined")
    return room_uuid


def paging(frame: Frame) -> tuple[int, int]:
    """``(Offset, Limit)`` of a HISTORY frame, from the JSON in ``Message.Message``; none given: ``(0, 0)``,
    the whole history."""
    message = frame.get("Message")
    if message is None:
        return 0, 0
    if not isinstance(message, dict):
        raise Refused("HISTORY: Message must be an object")
    text = message.get("Message")
    if text is None or text == "":
        return 0, 0
    bad = Refused('HISTORY: Message.Message must be JSON like {"Offset":0,"Limit":40}')
    if not isinstance(text, str):
        raise bad
    try:
        wanted = json.loads(text)
    except (ValueError, RecursionError):  # (nesting deeper than the recursion limit: a 6 KB frame can hold it)
        raise bad from None
    if not isinstance(wanted, dict):
        raise bad
    values = []
    for name in ("Offset", "Limit"):
        value = wanted.get(name, 0)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Refused(f"HISTORY: {name} must be a non-negative integer")
        values.append(value)
    return values[0], values[1]


def may_have_more(room_uuid: str, page: list[Message], offset: int, limit: int) -> bytes:
    """The ``MAY_HAVE_MORE`` frame (§5.3) after a full page: the oldest timestamp in it and the next offset."""
    try:
        oldest = int(page[0].get("Timestamp") or 0)
    except (TypeError, ValueError):
        oldest = 0
    return encode({"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid, "Timestamp": oldest, "Offset": offset,
                   "Limit": limit})
