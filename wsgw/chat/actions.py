"""The five client requests of ``/chat`` (PROTOCOL.md §5.2): JOIN (and its PING), LEAVE, HISTORY, POST
(new and edit) and DELETE_MSG.

Each runs with the frame's socket state and the access it started with. A
re-subscribe is not one of a socket's frames, so a request that waited on the
store re-checks the socket's current access (and login) before it attaches a
room or sends a room's messages. Every stored change is published on the bus;
the room's sockets get it from there (``ChatService.handle``). A request that
cannot be done raises ``Refused``.

A change the store did not answer (``OutcomeUnknown``: Redis stalled past the
store timeout) may still be applied: it is answered with an error frame saying
the outcome is not known yet and not to send it again (JOIN: that it may be
sent again, it is idempotent), and published once the store answered the
change, which it sends again under the same id until then (issue 11, section
5). "The chat store is unavailable, try again later" means nothing was sent.

JOIN answers ``ROOM_UPDATE`` only, as the current Cells server does: the stock
frontend's unread badges JOIN every cell's room and count every message frame
they get as new, and its chat panels ask HISTORY themselves.
``history_on_join`` sends the newest page after it instead, as the seed
document words it, for clients that expect that.
"""

from __future__ import annotations

import datetime
import uuid as uuidlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsgw.access import Access
from wsgw.chat import requests
from wsgw.chat.membership import ChatSocket, Membership
from wsgw.chat.model import (
    ChatStoreError,
    Message,
    NoSuchMessage,
    NoSuchRoom,
    NotAuthor,
    OutcomeUnknown,
    Room,
    StoreUnavailable,
    TooManyEdits,
    TooManyRooms,
    room_update,
)
from wsgw.chat.requests import Frame, Limited, Refused
from wsgw.chat.sanitize import sanitize_markdown, worth_offloading
from wsgw.frames import encode, error
from wsgw.interfaces import IChatStore
from wsgw.sessions import Session

JOIN_PAGE = 40  # messages sent on JOIN with history_on_join, as the seed document says
NO_SUCH_ROOM = "HISTORY: no such room"  # also for a room one may not read (its existence is not revealed)
COUNTED = frozenset({"GLOBAL", "NODE"})  # room types anyone may create with any object: counted per creator

Action = Callable[[Session, ChatSocket, Access, Frame], Awaitable[None]]

# the answer to a change whose store call got no answer: it may be applied yet (issue 11, section 5)
NO_ANSWER = "the chat store did not answer in time"
JOIN_NO_ANSWER = f"JOIN: {NO_ANSWER}; send it again (a JOIN may be repeated safely)"


def _room_event(result: tuple[Room | None, bool]) -> dict[str, Any] | None:
    room, changed = result
    return {"Room": room} if room is not None and changed else None


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Actions:
    """The request handlers, by ``@type`` in ``by_type``; ``publish(payload)`` puts a chat event on the bus,
    ``offload(f, *args)`` runs ``f`` off the reactor thread (None: inline), ``track(d)`` keeps background work
    (a change in doubt, published once its outcome is known) until it fires."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: IChatStore,
        membership: Membership,
        publish: Callable[[bytes], Deferred[bool]],
        *,
        history_cap: int,
        history_on_join: bool,
        max_message_chars: int,
        offload: Callable[..., Deferred[Any]] | None,
        max_rooms_per_user: int = 0,
        max_edits_per_message: int = 0,
        max_history_page: int = 0,
        limits: Counter[str] | None = None,
        max_rooms_per_socket: int = 0,
        max_history_bytes: int = 1 << 20,
        track: Callable[[Deferred[Any]], object] = lambda d: d,
    ) -> None:
        self._clock = clock
        self._store = store
        self._membership = membership
        self._publish = publish
        self._history_cap = history_cap
        self._history_on_join = history_on_join
        self._max_chars = max_message_chars
        self._offload = offload
        self._max_rooms = max_rooms_per_user
        self._max_edits = max_edits_per_message
        self._max_page = max_history_page
        self._max_joined = max_rooms_per_socket
        self._max_page_bytes = max_history_bytes
        self._limits = limits if limits is not None else Counter()  # answers a bound cut short, by limit
        self._track = track
        self.by_type: dict[str, Action] = {
            "JOIN": self.join, "LEAVE": self.leave, "POST": self.post, "HISTORY": self.history,
            "DELETE_MSG": self.delete,
        }

    # JOIN ------------------------------------------------------------

    async def join(self, session: Session, state: ChatSocket, access: Access, frame: Frame) -> None:
        type, type_object, label = requests.room_spec(frame, "JOIN")
        message = frame.get("Message")
        ping = isinstance(message, dict) and message.get("Message") == "PING"
        if not requests.may_join(access, type, type_object):
            joined = requests.joined_uuid(state.rooms, type, type_object)
            if joined is not None:
                await self._membership.detach(session, state, joined)
            raise Refused(f"JOIN: not allowed to join this {type} room")
        now = self._clock.seconds()
        joined = requests.joined_uuid(state.rooms, type, type_object)
        if joined is None and self._max_joined and len(state.rooms) >= self._max_joined:
            raise Limited(f"JOIN: too many rooms joined on this socket (at most {self._max_joined}): LEAVE one first",
                          "rooms_per_socket")
        if ping and joined is not None:  # the usual heartbeat: refresh presence only
            touched, changed = await self._touch(session, joined, access.login, now)
            if not session.open:
                return
            try:
                self._recheck(session, state, access, "JOIN", type, type_object)
            except Refused:
                if joined in state.rooms:
                    await self._membership.detach(session, state, joined)
                raise
            if joined not in state.rooms:  # left meanwhile by an access that no longer allowed it
                raise Refused("JOIN: the room was left while refreshing it")
            if touched is not None and changed:
                await self._publish_event({"Room": touched}, "JOIN")
            return
        if ping:
            found = await self._store.find_room(type, type_object)
            if found is None:
                raise Refused("JOIN: PING for a room that does not exist")
            room: Room = found
        else:
            label = await self._sanitize(label)
            creator = access.login if type in COUNTED else ""
            try:
                room, _ = await self._store.find_or_create_room(type, type_object, label, now, creator,
                                                                self._max_rooms)
            except TooManyRooms:
                raise Limited(f"JOIN: too many rooms created by this user (at most {self._max_rooms})",
                              "rooms_per_user") from None
            except OutcomeUnknown as unknown:  # a room made later has nobody in it: nothing to announce
                self._later(session, "JOIN", unknown.outcome, lambda _: None)
                raise Refused(JOIN_NO_ANSWER) from None
        if not session.open:
            return
        self._recheck(session, state, access, "JOIN", type, type_object)
        room_uuid = room["Uuid"]
        self._membership.attach(session, state, room_uuid, type, type_object)
        try:
            touched, changed = await self._touch(session, room_uuid, access.login, now)
            if touched is None:
                raise Refused("JOIN: the room was deleted")
            history: list[Message] = []
            if self._history_on_join and not ping:
                history = await self._store.page(room_uuid, 0, JOIN_PAGE + 1)
            if not session.open:
                return
            self._recheck(session, state, access, "JOIN", type, type_object)
            if room_uuid not in state.rooms:  # left meanwhile by an access that no longer allowed it
                raise Refused("JOIN: the room was left while joining it")
        except BaseException:
            if session.open and room_uuid in state.rooms:
                try:
                    await self._membership.detach(session, state, room_uuid)
                except StoreUnavailable:  # the answer stays the JOIN's own; the presence ends at its deadline
                    self._log.info("chat JOIN: could not remove the presence of a failed JOIN: store unavailable")
            raise
        frames = [room_update(touched)]
        if len(history) > JOIN_PAGE:
            history = history[1:]
            frames += [encode(m) for m in history]
            frames.append(requests.may_have_more(room_uuid, history, JOIN_PAGE, JOIN_PAGE))
        else:
            frames += [encode(m) for m in history]
        self._membership.release(session, state, room_uuid, frames)
        if not ping or changed:
            await self._publish_event({"Room": touched}, "JOIN")

    async def _touch(self, session: Session, room_uuid: str, login: str, now: float) -> tuple[Room | None, bool]:
        """Refresh the login's presence; when the store does not answer, the room is announced once it does."""
        try:
            touched: tuple[Room | None, bool] = await self._membership.presence.touch(room_uuid, login, now)
        except OutcomeUnknown as unknown:
            self._later(session, "JOIN", unknown.outcome, _room_event)
            raise Refused(JOIN_NO_ANSWER) from None
        return touched

    def _later(self, session: Session, action: str, outcome: Deferred[Any],
               event_of: Callable[[Any], dict[str, Any] | None]) -> None:
        """A change in doubt (issue 11, section 5): once the store answered it, publish its event (when there
        is one, ``event_of(result)``), or tell the socket, if still open, that it was not done after all."""
        async def settle() -> None:
            try:
                event = event_of(await outcome)
                if event is not None:
                    await self._publish_event(event, action)
            except (ChatStoreError, Refused) as e:
                reason = str(e) if isinstance(e, Refused) else f"{action}: not done after all ({_why(e)})"
                if session.open:
                    session.send(error(reason))
            except CancelledError:  # the store stopped (shutdown) before it answered
                self._log.warn("chat {action}: its outcome stayed unknown: the store stopped first", action=action)
            except Exception:  # noqa: BLE001 - logged, never lost in a Deferred
                self._log.failure("chat {action}: its outcome stayed unknown", action=action)
        self._track(Deferred.fromCoroutine(settle()))

    def _recheck(self, session: Session, state: ChatSocket, access: Access, action: str, type: str,
                 type_object: str, verb: str = "join") -> None:
        """After an await: go on only if the socket is still subscribed as the login the frame started
        with and its current access (a re-subscribe may have replaced it meanwhile) allows the room."""
        current = session.access
        if current is None:
            raise Refused(f"{action}: not subscribed")
        if current.login != access.login or state.login != access.login:
            raise Refused(f"{action}: the socket re-subscribed as another user meanwhile")
        if not requests.may_join(current, type, type_object):
            raise Refused(f"{action}: not allowed to {verb} this {type} room")

    # LEAVE -----------------------------------------------------------

    async def leave(self, session: Session, state: ChatSocket, access: Access, frame: Frame) -> None:
        await self._membership.detach(session, state, requests.joined_room(state.rooms, frame, "LEAVE"))

    # HISTORY ---------------------------------------------------------

    async def history(self, session: Session, state: ChatSocket, access: Access, frame: Frame) -> None:
        offset, limit = requests.paging(frame)
        asked = limit
        if self._max_page and (limit == 0 or limit > self._max_page):
            limit = self._max_page  # a full page then ends with MAY_HAVE_MORE, for the client to page on
        room = await self._find_room(frame, access, "HISTORY")
        if room is None or not requests.may_join(access, room["Type"], room["RoomTypeObject"]):
            raise Refused(NO_SUCH_ROOM)  # a room one may not read is not told apart from a missing one
        self._recheck(session, state, access, "HISTORY", room["Type"], room["RoomTypeObject"], "read")
        room_uuid = room["Uuid"]
        joined = room_uuid in state.rooms
        if joined:
            self._membership.hold(session, state, room_uuid)
        try:
            page = await self._store.page(room_uuid, offset, limit)
            if not session.open:
                return
            self._recheck(session, state, access, "HISTORY", room["Type"], room["RoomTypeObject"], "read")
        except BaseException:
            self._membership.drop_held(session, state, room_uuid)
            raise
        encoded = [encode(m) for m in page]
        first, size = len(encoded), 0  # keep the newest messages that fit in max_history_bytes (one at least)
        while first and (first == len(encoded) or size + len(encoded[first - 1]) <= self._max_page_bytes):
            first -= 1
            size += len(encoded[first])
        if first:
            self._limits["history_bytes"] += 1
            page, encoded = page[first:], encoded[first:]
        frames = [room_update(room)] + encoded
        if first or (limit > 0 and len(page) == limit):
            frames.append(requests.may_have_more(room_uuid, page, offset + len(page), limit))
            if limit != asked and not first:
                self._limits["history_page"] += 1
        if joined and room_uuid in state.rooms:
            self._membership.release(session, state, room_uuid, frames)
        else:
            scope = requests.ForRoom(room["Type"], room["RoomTypeObject"])
            for payload in frames:
                session.send(payload, scope)

    async def _find_room(self, frame: Frame, access: Access, action: str) -> Room | None:
        """The room the frame names, by ``Room.Uuid`` or type and object (not looked up when ``access`` may not
        read a room of that type and object: None)."""
        room_uuid = requests.room_uuid_of(frame, action)
        if room_uuid is not None:
            found: Room | None = await self._store.get_room(room_uuid)
        else:
            type, type_object, _ = requests.room_spec(frame, action)
            if not requests.may_join(access, type, type_object):
                return None
            found = await self._store.find_room(type, type_object)
        return found

    # POST ------------------------------------------------------------

    async def _sanitize(self, text: str) -> str:
        """Sanitize on the reactor when it is cheap; a long text with markup can cost a crafted 100+ ms of
        CommonMark parsing, so it goes to a worker thread (the GIL still lets the reactor serve others)."""
        if self._offload is None or not worth_offloading(text):
            return sanitize_markdown(text)
        clean: str = await self._offload(sanitize_markdown, text)
        return clean

    async def post(self, session: Session, state: ChatSocket, access: Access, frame: Frame) -> None:
        message = requests.message_of(frame, "POST")
        text = message.get("Message")
        if not isinstance(text, str):
            raise Refused("POST: Message.Message must be a string")
        if len(text) > self._max_chars:
            raise Refused(f"POST: message too long ({len(text)} characters, at most {self._max_chars})")
        edit_uuid = message.get("Uuid")
        if edit_uuid is not None and not requests.is_field(edit_uuid):
            raise Refused(f"POST: Message.Uuid must be a string of at most {requests.MAX_FIELD} characters")
        room_uuid = requests.joined_room(state.rooms, frame, "POST")
        if edit_uuid and worth_offloading(text):  # who may edit is checked before costly work on the text (the
            self._editable(await self._store.get_message(room_uuid, edit_uuid), access.login)  # edit checks again)
        clean = await self._sanitize(text)
        if not clean.strip():
            raise Refused("POST: empty message")
        now = self._clock.seconds()
        if edit_uuid:
            try:
                stored = await self._store.edit_message(room_uuid, edit_uuid, access.login, clean, _rfc3339(now),
                                                        self._max_edits)
            except NoSuchMessage:
                raise Refused("POST: no such message in this room to edit") from None
            except NotAuthor:
                raise Refused("POST: cannot edit a message written by someone else") from None
            except TooManyEdits:
                raise self._too_many_edits() from None
            except OutcomeUnknown as unknown:
                self._later(session, "POST", unknown.outcome, lambda edited: {"Message": edited})
                raise Refused(f"POST: {NO_ANSWER}; the edit will be applied once it answers: do not send it again"
                              ) from None
        else:
            stored = {
                "Uuid": str(uuidlib.uuid4()), "RoomUuid": room_uuid, "Message": clean,
                "Author": access.login, "Timestamp": str(int(now)),
            }
            try:
                await self._store.post_message(stored, self._history_cap)
            except NoSuchRoom:
                raise Refused("POST: the room was deleted") from None
            except OutcomeUnknown as unknown:
                posted = stored
                self._later(session, "POST", unknown.outcome, lambda _: {"Message": posted})
                raise Refused(f"POST: {NO_ANSWER}; the message will be posted once it answers: do not send it again"
                              ) from None
        await self._publish_event({"Message": stored}, "POST")

    def _editable(self, found: Message | None, login: str) -> None:
        """Refuse to edit ``found`` (the stored message, None when missing) for ``login``: missing, written by
        someone else, or edited ``max_edits_per_message`` times already."""
        if found is None:
            raise Refused("POST: no such message in this room to edit")
        if found.get("Author") != login:
            raise Refused("POST: cannot edit a message written by someone else")
        activity = found.get("Activity")
        items = activity.get("items") if isinstance(activity, dict) else None
        if self._max_edits and isinstance(items, list) and len(items) >= self._max_edits:
            raise self._too_many_edits()

    def _too_many_edits(self) -> Limited:
        return Limited(f"POST: this message was edited too many times (at most {self._max_edits} edits)",
                       "edits_per_message")

    # DELETE_MSG ------------------------------------------------------

    async def delete(self, session: Session, state: ChatSocket, access: Access, frame: Frame) -> None:
        message = requests.message_of(frame, "DELETE_MSG")
        message_uuid = message.get("Uuid")
        if not message_uuid:
            raise Refused("DELETE_MSG: missing Message.Uuid")
        if not requests.is_field(message_uuid):
            raise Refused(f"DELETE_MSG: Message.Uuid must be a string of at most {requests.MAX_FIELD} characters")
        room_uuid = requests.joined_room(state.rooms, frame, "DELETE_MSG")
        try:
            deleted = await self._store.delete_message(room_uuid, message_uuid, access.login)
        except NoSuchMessage:
            raise Refused("DELETE_MSG: no such message in this room") from None
        except NotAuthor:
            raise Refused("DELETE_MSG: cannot delete a message written by someone else") from None
        except OutcomeUnknown as unknown:
            self._later(session, "DELETE_MSG", unknown.outcome, lambda gone: {"Message": gone, "Details": "DELETE"})
            raise Refused(f"DELETE_MSG: {NO_ANSWER}; the message will be deleted once it answers: do not send it "
                          "again") from None
        await self._publish_event({"Message": deleted, "Details": "DELETE"}, "DELETE_MSG")

    async def _publish_event(self, event: dict[str, Any], action: str) -> None:
        """Publish a stored change's event; when the bus refuses it, it is published again until the bus takes
        it (``publish`` fires False), and the socket is told so."""
        if not await self._publish(encode(event)):
            raise Refused(f"{action}: saved, but the bus is unavailable: it will be broadcast once the bus is back")


_WHY: dict[type[ChatStoreError], str] = {
    NoSuchRoom: "the room was deleted", NoSuchMessage: "no such message in this room",
    NotAuthor: "the message was written by someone else", TooManyEdits: "the message was edited too many times",
    TooManyRooms: "too many rooms created by this user",
}


def _why(failure: ChatStoreError) -> str:
    """Why a change in doubt was refused once the store answered it."""
    return _WHY.get(type(failure), str(failure))
