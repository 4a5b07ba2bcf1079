"""Which sockets of this instance are in which room (PROTOCOL.md §5.2, §5.3), and the room broadcasts.

A socket attaches a room on JOIN (or a PING that re-attaches it) and detaches it
on LEAVE, on losing the access, or when it closes; the login's presence follows
(``wsgw.chat.presence``). While a socket loads a room's messages (JOIN, HISTORY),
broadcasts for that room are held for it and released after them, so a socket
always gets ``ROOM_UPDATE`` before any message of the room and loses none. What
is held counts against the socket's one byte bound (``Flow.hold_outside``): past
it the socket is closed 4008 like any reader that fell that far behind.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import DeferredLock

from wsgw.chat.presence import Presence
from wsgw.chat.requests import ForRoom
from wsgw.flow import ENTRY_COST
from wsgw.sessions import Session, fan_out


@attrs.define(eq=False)
class ChatSocket:
    """What this instance knows of one /chat socket (its ``Session.state``)."""

    lock: DeferredLock = attrs.field(factory=DeferredLock)  # its frames run one after the other
    queued_bytes: int = 0  # the size on the wire of the frames waiting for the lock
    login: str | None = None
    rooms: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # joined room uuid -> (Type, RoomTypeObject)
    held: dict[str, list[bytes]] = attrs.field(factory=dict)  # room uuid -> broadcasts held while loading


class Membership:
    """The rooms of this instance's sockets, and the presence of their logins (through ``presence``)."""

    def __init__(self, presence: Presence) -> None:
        self.presence = presence
        self._room_sockets: dict[str, set[Session]] = {}
        self._scopes: dict[str, ForRoom] = {}  # what each room's broadcasts are produced for

    @property
    def rooms_active(self) -> int:
        """Rooms that have at least one socket of this instance attached."""
        return len(self._room_sockets)

    def attach(self, session: Session, state: ChatSocket, room_uuid: str, type: str, type_object: str) -> None:
        """Attach the room to the socket, holding the room's broadcasts for it until ``release``."""
        self.hold(session, state, room_uuid)
        if room_uuid in state.rooms:
            return
        state.rooms[room_uuid] = (type, type_object)
        self._room_sockets.setdefault(room_uuid, set()).add(session)
        self._scopes[room_uuid] = ForRoom(type, type_object)
        assert state.login is not None
        self.presence.attach(room_uuid, state.login, session)

    def hold(self, session: Session, state: ChatSocket, room_uuid: str) -> None:
        """Hold the room's broadcasts for a socket that has it attached until ``release`` (or ``drop_held``)."""
        self.drop_held(session, state, room_uuid)
        state.held[room_uuid] = []

    def drop_held(self, session: Session, state: ChatSocket, room_uuid: str) -> list[bytes]:
        """Stop holding (the load failed); what was held is dropped (returned), the socket goes on from here."""
        held = state.held.pop(room_uuid, None) or []
        if held:
            session.flow.release_outside(sum(len(payload) + ENTRY_COST for payload in held))
        return held

    def release(self, session: Session, state: ChatSocket, room_uuid: str, first: list[bytes]) -> None:
        """Send ``first`` (the room's update and messages), then what was held meanwhile."""
        held = self.drop_held(session, state, room_uuid)
        scope = self._scopes[room_uuid]
        for payload in first + held:
            session.send(payload, scope)

    async def detach(self, session: Session, state: ChatSocket, room_uuid: str) -> None:
        """Detach the room from the socket; the login's last socket here takes its presence along."""
        state.rooms.pop(room_uuid, None)
        self.drop_held(session, state, room_uuid)
        sockets = self._room_sockets.get(room_uuid)
        if sockets is not None:
            sockets.discard(session)
            if not sockets:
                del self._room_sockets[room_uuid]
                del self._scopes[room_uuid]
        if state.login is not None:
            await self.presence.detach(room_uuid, state.login, session)

    def broadcast(self, room_uuid: str, payload: bytes) -> int:
        """Send ``payload`` to the subscribed sockets here that have the room attached (held for those loading
        it, counted against their byte bound: one past it is closed 4008); returns how many got it now."""
        sessions = self._room_sockets.get(room_uuid)
        if not sessions:
            return 0
        now: list[Session] = []
        for session in sessions:
            state = session.state
            if not isinstance(state, ChatSocket) or session.access is None:
                continue
            held = state.held.get(room_uuid)
            if held is None:
                now.append(session)
            elif session.flow.hold_outside(len(payload) + ENTRY_COST):
                held.append(payload)
        return fan_out(now, payload, self._scopes[room_uuid], what="chat event")
