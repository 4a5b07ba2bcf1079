"""The chat rules of PROTOCOL.md §5: frames from /chat sockets, presence, and room broadcasts.

``ChatService`` is one instance's chat core. The protocol layer hands it each
chat frame of a subscribed socket (``handle_frame``) and tells it when sockets
open and close; the dispatcher hands it each chat-topic event from the bus
(``handle``). Every stored change is published on the bus and comes back
through ``handle`` on every instance, this one included: that is the only way a
message reaches the sockets of a room, so a room spans instances.

Invariants:
- A socket gets ``ROOM_UPDATE`` before any message of that room: it is sent
  directly when the socket attaches a room (JOIN, or a PING that re-attaches),
  and first in every HISTORY reply. While a JOIN loads history, broadcasts for
  that room are held for the socket and sent after the history.
- Frames of one socket are handled one at a time, in order (a POST right after
  a JOIN sees the room joined). A re-subscribe is not one of those frames, so a
  JOIN or HISTORY that waited on the store re-checks the socket's current access
  (and login) before it attaches the room or sends the room's messages.
- Presence: a login is in a room's stored ``Users`` while one of its sockets
  here has the room joined and JOINed or PINGed it within ``presence_timeout``;
  each instance expires the logins of its own sockets (conditionally, so a
  fresher refresh from another instance wins). ``stop()`` waits for the
  removals still in flight, so a shutdown does not leave its logins behind.
- Message text is sanitized with a CommonMark parser deciding what is code
  (``sanitize_markdown``): nothing it would render as raw HTML is stored.
"""

from __future__ import annotations

import datetime
import html
import json
import re
import uuid as uuidlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline, backtick
from markdown_it.token import Token
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsgw.access import Access
from wsgw.chat.store import NoSuchMessage, NoSuchRoom, NotAuthor, Room, StoreUnavailable
from wsgw.events import MalformedEvent, field
from wsgw.frames import encode, error
from wsgw.sessions import Session

ROOM_TYPES = frozenset({"GLOBAL", "WORKSPACE", "USER", "NODE"})
JOIN_PAGE = 40  # messages sent on JOIN, as the seed document says
_MAX_QUEUED = 32  # frames of one socket waiting for the previous ones
_MAX_HELD = 1000  # broadcasts held for one socket while its JOIN loads history
_MAX_FIELD = 512  # characters of a room type object, label, or uuid


class _Refused(Exception):
    """A frame refused with a reason that names the action; answered with an error frame."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- sanitizing

_NEWLINES = re.compile(r"\r\n?")
_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones reach a str (JSON "\\ud800"); UTF-8 cannot hold them
_TICK = re.compile("`")
_PASSES = 3  # clean-and-reparse rounds before falling back to escaping every "<" (cost: 2 parses each)


def _recording_backtick(state: StateInline, silent: bool) -> bool:
    """markdown-it's code span rule, noting on each code_inline token where in the inline source it was."""
    start, count = state.pos, len(state.tokens)
    found = backtick(state, silent)
    if found and not silent and len(state.tokens) > count and state.tokens[-1].type == "code_inline":
        state.tokens[-1].meta["span"] = (start, state.pos)
    return found


_OFFLOAD_CHARS = 1000  # below this, sanitizing costs at most a few ms even for crafted input


def _parser(*extensions: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable(list(extensions))
    md.inline.ruler.at("backticks", _recording_backtick)
    return md


# The parsers that decide what is code and what is raw HTML: CommonMark, and CommonMark with GFM
# tables, which most chat clients render and which split a row into cells before finding code
# spans. Text is kept verbatim only where both see code, and must hold no raw HTML for either.
_PARSERS = (_parser(), _parser("table"))


class _Unmapped(Exception):
    """A code span could not be located in the source (never seen; handled by cleaning everything)."""


def _clean_prose(text: str) -> str:
    """Strip every HTML tag and comment with nh3, then unescape what nh3 escaped, so Markdown
    (``> quote``, ``a < b``, ``&``) reads as typed. Repeat until stable, so text that only
    unescapes into a tag (``&lt;script&gt;``) is cleaned too; if it does not settle, keep
    nh3's escaped (inert) output."""
    for _ in range(4):
        cleaned = html.unescape(nh3.clean(text, tags=set()))
        if cleaned == text:
            return text
        text = cleaned
    return nh3.clean(text, tags=set())


def _code_ranges(text: str, tokens: list[Token]) -> list[tuple[int, int]]:
    """The sorted ``[start, end)`` ranges of ``text`` that the parse ``tokens`` reads as code: the lines
    of fenced and indented code blocks (with their container markers), and inline code spans.

    markdown-it gives blocks their lines but inline tokens no columns: a span's offsets are in its
    inline content, which is its source lines minus container markers, indentation, heading markers,
    cell pipes and surrounding whitespace, none of which holds a backtick. So, going through the
    inline tokens of the same lines (the cells of a table row) in order, the n-th backtick of their
    contents is the n-th backtick of those lines, and a span (backtick to backtick) maps back exactly."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def offset(line: int) -> int:
        return starts[line] if line < len(starts) else len(text)

    ranges: list[tuple[int, int]] = []
    rows: dict[tuple[int, int], list[Token]] = {}
    for token in tokens:
        if token.type in ("fence", "code_block") and token.map is not None:
            ranges.append((offset(token.map[0]), offset(token.map[1])))
        elif token.type == "inline" and any(child.type == "code_inline" for child in token.children or ()):
            if token.map is None:
                raise _Unmapped
            rows.setdefault((token.map[0], token.map[1]), []).append(token)
    for (first, last), inlines in rows.items():
        source = [m.start() for m in _TICK.finditer(text, offset(first), offset(last))]
        at = 0
        for token in inlines:
            index: dict[int, int] = {}
            for m in _TICK.finditer(token.content):
                index[m.start()] = at
                at += 1
            for child in token.children or ():
                if child.type != "code_inline":
                    continue
                span = child.meta.get("span")
                if span is None or at > len(source):
                    raise _Unmapped
                ranges.append((source[index[span[0]]], source[index[span[1] - 1]] + 1))
        if at > len(source) or (len(inlines) == 1 and at != len(source)):
            raise _Unmapped
    return sorted(ranges)


def _intersection(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts common to two sorted lists of disjoint ranges."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _has_html(tokens: list[Token]) -> bool:
    """Whether markdown-it would pass raw HTML through when rendering these tokens."""
    return any(
        token.type in ("html_block", "html_inline") or (token.children is not None and _has_html(token.children))
        for token in tokens
    )


def _clean_outside(text: str, ranges: list[tuple[int, int]]) -> str:
    """``text`` with everything outside ``ranges`` (sorted, disjoint) cleaned as prose."""
    out: list[str] = []
    at = 0
    for start, end in ranges:
        out.append(_clean_prose(text[at:start]))
        out.append(text[start:end])
        at = end
    out.append(_clean_prose(text[at:]))
    return "".join(out)


def sanitize_markdown(text: str) -> str:
    """Remove HTML from a chat message and keep its Markdown intact.

    A CommonMark parser (markdown-it-py; with and without GFM tables) decides
    what is code: code spans, fenced and indented code blocks are kept verbatim,
    since Markdown shows them as literal text (so ``if a<b:`` in code is not
    eaten as a tag). Everything else goes through nh3 (no tag allowed) and is
    unescaped back to Markdown source. Cleaning can change how the rest parses,
    so the result is parsed again until it is stable and holds no raw HTML;
    text that does not get there in a few rounds has every ``<`` escaped, which
    no Markdown reads as HTML. Line endings become ``\\n``, NUL goes, and a lone
    surrogate (which nh3 and UTF-8 cannot take) becomes U+FFFD.
    """
    text = _SURROGATE.sub("\ufffd", _NEWLINES.sub("\n", text.replace("\x00", "")))
    if "<" not in text and "&" not in text:
        return text  # no tag, nothing that unescapes into one: nh3 would change nothing
    for _ in range(_PASSES):
        # without a '|' there is no table: the GFM parse would be the CommonMark one
        parses = [md.parse(text) for md in (_PARSERS if "|" in text else _PARSERS[:1])]
        try:
            common = _code_ranges(text, parses[0])
            for tokens in parses[1:]:
                common = _intersection(common, _code_ranges(text, tokens))
        except _Unmapped:
            common = []  # clean everything: code may lose a tag, nothing unsafe stays
        cleaned = _clean_outside(text, common)
        if cleaned == text and not any(_has_html(tokens) for tokens in parses):
            return text
        text = cleaned
    return text.replace("<", "&lt;")


# --------------------------------------------------------------------------- permissions


def may_join(access: Access, type: str, type_object: str) -> bool:
    """§5.2: WORKSPACE rooms for members of the workspace, USER rooms for that user (login or
    sub), GLOBAL and NODE rooms for any profile but ``anon``."""
    if type == "WORKSPACE":
        return any(ws.uuid == type_object for ws in access.workspaces)
    if type == "USER":
        return type_object in (access.login, access.sub)
    return access.profile != "anon"


# --------------------------------------------------------------------------- state


@attrs.define(eq=False)
class _Socket:
    """What this instance knows of one /chat socket."""

    lock: DeferredLock = attrs.field(factory=DeferredLock)
    login: str | None = None
    rooms: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # joined room uuid -> (Type, RoomTypeObject)
    held: dict[str, list[bytes]] = attrs.field(factory=dict)  # room uuid -> broadcasts held while loading


@attrs.define(eq=False)
class _Member:
    """A login in a room, as seen from this instance: its sockets here and its presence timer."""

    sockets: set[Session] = attrs.field(factory=set)
    last_touch: float | None = None
    timer: IDelayedCall | None = None


def _room_update(room: Room) -> bytes:
    return encode({"@type": "ROOM_UPDATE", "Room": room})


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ChatService:
    """One instance's chat core: rules, presence, and broadcasts to this instance's sockets."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        publish: Callable[[bytes], Deferred],
        *,
        history_cap: int = 1000,
        presence_timeout: float = 20.0,
        max_message_chars: int = 8000,
        offload: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._clock = clock
        # offload(f, *args) runs f off the reactor thread (deferToThreadPool); None: inline (tests, no threads)
        self._offload = offload
        self._store = store
        self._publish = publish
        self._history_cap = history_cap
        self._timeout = presence_timeout
        self._max_chars = max_message_chars
        self._sockets: dict[Session, _Socket] = {}
        self._room_sockets: dict[str, set[Session]] = {}
        self._members: dict[tuple[str, str], _Member] = {}
        self._pending: set[Deferred] = set()  # background store work and frames in flight, for stop()
        self._idle: list[Deferred[None]] = []  # stop() waiters: fired when _pending empties
        self._handlers: dict[str, Callable[[Session, _Socket, Access, dict], Awaitable[None]]] = {
            "JOIN": self._join,
            "LEAVE": self._leave,
            "POST": self._post,
            "HISTORY": self._history,
            "DELETE_MSG": self._delete,
        }
        # metrics, read at scrape time
        self.handled: Counter[str] = Counter()  # client frames done, by action
        self.refused = 0  # client frames answered with an error frame
        self.delivered = 0  # bus chat events handed to sockets

    # ----------------------------------------------------------------- sockets

    def attach(self, session: Session) -> None:
        """A /chat socket opened."""
        self._sockets.setdefault(session, _Socket())

    def detach(self, session: Session) -> None:
        """A /chat socket closed: leave its rooms (presence goes when it was the login's last socket)."""
        state = self._sockets.pop(session, None)
        if state is not None:
            for room_uuid in list(state.rooms):
                self._leave_soon(session, state, room_uuid)

    def access_changed(self, session: Session) -> None:
        """The socket re-subscribed or unsubscribed: leave the rooms its access no longer allows
        (all of them when the login changed or it unsubscribed). Also checked before each frame."""
        state = self._sockets.get(session)
        if state is None:
            return
        access = session.access
        for room_uuid, (type, type_object) in list(state.rooms.items()):
            if access is None or access.login != state.login or not may_join(access, type, type_object):
                self._leave_soon(session, state, room_uuid)
        if access is None or access.login != state.login:
            state.login = None if access is None else access.login

    def _leave_soon(self, session: Session, state: _Socket, room_uuid: str) -> None:
        """Leave a room now; the store update it causes completes in the background."""
        d = Deferred.fromCoroutine(self._leave_room(session, state, room_uuid))
        self._track(d.addErrback(self._logged, "leaving a room"))

    def _track(self, d: Deferred) -> Deferred:
        """Keep ``d`` (work that never fails) until it fires, so that stop() can wait for it."""
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            if not self._pending:
                waiters, self._idle = self._idle, []
                for waiter in waiters:
                    if not waiter.called:  # a waiter cancelled by its timeout has fired already
                        waiter.callback(None)
            return result

        return d.addBoth(done)

    def rooms_of(self, session: Session) -> frozenset[str]:
        """The room uuids the socket has joined (for tests and metrics)."""
        state = self._sockets.get(session)
        return frozenset(state.rooms) if state else frozenset()

    @property
    def rooms_active(self) -> int:
        """Rooms that have at least one socket of this instance attached."""
        return len(self._room_sockets)

    def stop(self) -> Deferred[None]:
        """At shutdown, after the sockets were closed: cancel the presence timers. The Deferred fires
        when the presence removals (leaves of the closed sockets, expiries) and frames still in flight
        are stored and published; it never fails. The caller bounds the wait (``addTimeout``):
        cancelling it only stops waiting, the work goes on."""
        for member in self._members.values():
            if member.timer is not None and member.timer.active():
                member.timer.cancel()
            member.timer = None
        if not self._pending:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    # ----------------------------------------------------------------- frames

    def handle_frame(self, session: Session, frame: dict) -> Deferred | None:
        """Handle one chat frame; frames of a socket run one after the other. The Deferred
        fires (never fails) when the frame is done."""
        state = self._sockets.get(session)
        if state is None:
            state = self._sockets[session] = _Socket()
        if len(state.lock.waiting) >= _MAX_QUEUED:
            action = frame.get("@type") if isinstance(frame, dict) else None
            session.send(error(f"{action if isinstance(action, str) else 'chat'}: too many requests in flight"))
            return None
        return self._track(state.lock.run(lambda: Deferred.fromCoroutine(self._frame(session, state, frame))))

    async def _frame(self, session: Session, state: _Socket, frame: dict) -> None:
        if session not in self._sockets:
            return  # closed while this frame waited for the previous ones
        action = frame.get("@type") if isinstance(frame, dict) else None
        name = action if isinstance(action, str) and action else "chat frame"
        try:
            if not isinstance(frame, dict):
                raise _Refused("chat frame: must be a JSON object")
            if not isinstance(action, str) or not action:
                raise _Refused("chat frame: missing @type")
            handler = self._handlers.get(action)
            if handler is None:
                raise _Refused(f"unknown @type {_show(action)}")
            access = session.access
            if access is None:
                raise _Refused(f"{action}: not subscribed")
            if access.login != state.login:
                self.access_changed(session)
            await handler(session, state, access, frame)
            self.handled[action] += 1
        except StoreUnavailable as e:
            self._log.warn("chat {action} from {session} refused: store unavailable ({reason})", action=name,
                           session=session, reason=str(e))
            self._reply(session, error(f"{name}: the chat store is unavailable, try again later"))
        except _Refused as refused:
            self.refused += 1
            self._reply(session, error(str(refused)))
        except Exception:  # noqa: BLE001 - a store failure must answer the socket, not kill it
            self._log.failure("chat {action} from {session} failed", action=name, session=session)
            self._reply(session, error(f"{name}: internal error"))

    def _reply(self, session: Session, payload: bytes) -> None:
        if session in self._sockets:
            session.send(payload)

    # JOIN ------------------------------------------------------------

    async def _join(self, session: Session, state: _Socket, access: Access, frame: dict) -> None:
        type, type_object, label = _room_spec(frame, "JOIN")
        message = frame.get("Message")
        ping = isinstance(message, dict) and message.get("Message") == "PING"
        if not may_join(access, type, type_object):
            joined = _joined_uuid(state, type, type_object)
            if joined is not None:
                await self._leave_room(session, state, joined)
            raise _Refused(f"JOIN: not allowed to join this {type} room")
        now = self._clock.seconds()
        joined = _joined_uuid(state, type, type_object)
        if ping and joined is not None:  # the usual heartbeat: refresh presence only
            touched, changed = await self._touch(joined, access.login, now)
            if session not in self._sockets:
                return
            try:
                self._recheck(session, state, access, "JOIN", type, type_object)
            except _Refused:
                if joined in state.rooms:
                    await self._leave_room(session, state, joined)
                raise
            if joined not in state.rooms:  # left meanwhile by an access that no longer allowed it
                raise _Refused("JOIN: the room was left while refreshing it")
            if touched is not None and changed:
                await self._publish_event({"Room": touched}, "JOIN")
            return
        if ping:
            found = await self._store.find_room(type, type_object)
            if found is None:
                raise _Refused("JOIN: PING for a room that does not exist")
            room: Room = found
        else:
            room, _ = await self._store.find_or_create_room(type, type_object, label, now)
        if session not in self._sockets:
            return
        self._recheck(session, state, access, "JOIN", type, type_object)
        room_uuid = room["Uuid"]
        self._join_room(session, state, room_uuid, type, type_object)
        try:
            touched, changed = await self._touch(room_uuid, access.login, now)
            if touched is None:
                raise _Refused("JOIN: the room was deleted")
            history: list[dict] = [] if ping else await self._store.page(room_uuid, 0, JOIN_PAGE + 1)
            if session not in self._sockets:
                return
            self._recheck(session, state, access, "JOIN", type, type_object)
            if room_uuid not in state.rooms:  # left meanwhile by an access that no longer allowed it
                raise _Refused("JOIN: the room was left while joining it")
        except BaseException:
            if session in self._sockets and room_uuid in state.rooms:
                await self._leave_room(session, state, room_uuid)
            raise
        frames = [_room_update(touched)]
        if len(history) > JOIN_PAGE:
            history = history[1:]
            frames += [encode(m) for m in history]
            frames.append(_may_have_more(room_uuid, history, JOIN_PAGE, JOIN_PAGE))
        else:
            frames += [encode(m) for m in history]
        self._release_held(session, state, room_uuid, frames)
        if not ping or changed:
            await self._publish_event({"Room": touched}, "JOIN")

    def _recheck(self, session: Session, state: _Socket, access: Access, action: str, type: str,
                 type_object: str, verb: str = "join") -> None:
        """After an await: go on only if the socket is still subscribed as the login the frame started
        with and its current access (a re-subscribe may have replaced it meanwhile) allows the room."""
        current = session.access
        if current is None:
            raise _Refused(f"{action}: not subscribed")
        if current.login != access.login or state.login != access.login:
            raise _Refused(f"{action}: the socket re-subscribed as another user meanwhile")
        if not may_join(current, type, type_object):
            raise _Refused(f"{action}: not allowed to {verb} this {type} room")

    def _join_room(self, session: Session, state: _Socket, room_uuid: str, type: str, type_object: str) -> None:
        """Attach the room to the socket, holding the room's broadcasts until ``_release_held``."""
        state.held[room_uuid] = []
        if room_uuid in state.rooms:
            return
        state.rooms[room_uuid] = (type, type_object)
        self._room_sockets.setdefault(room_uuid, set()).add(session)
        assert state.login is not None
        self._members.setdefault((room_uuid, state.login), _Member()).sockets.add(session)

    def _release_held(self, session: Session, state: _Socket, room_uuid: str, first: list[bytes]) -> None:
        held = state.held.pop(room_uuid, [])
        for payload in first + held:
            session.send(payload)

    def _touch(self, room_uuid: str, login: str, now: float) -> Deferred:
        """Refresh the login's presence here (its expiry timer) and in the store."""
        member = self._members.get((room_uuid, login))
        if member is not None:
            member.last_touch = now
            if member.timer is not None and member.timer.active():
                member.timer.reset(self._timeout)
            else:
                member.timer = self._clock.callLater(self._timeout, self._expire, room_uuid, login)
        return self._store.touch_user(room_uuid, login, now, now - 2 * self._timeout)

    def _expire(self, room_uuid: str, login: str) -> None:
        member = self._members.get((room_uuid, login))
        if member is None:
            return
        since, member.last_touch, member.timer = member.last_touch, None, None
        self._log.debug("presence of {login} in {room} expired", login=login, room=room_uuid)
        d = self._store.remove_user(room_uuid, login, self._clock.seconds(), since)
        d.addCallback(self._publish_if_changed)
        self._track(d.addErrback(self._logged, "expiring presence"))

    async def _leave_room(self, session: Session, state: _Socket, room_uuid: str) -> None:
        """Detach the room from the socket; the login's last socket here takes its presence along."""
        state.rooms.pop(room_uuid, None)
        state.held.pop(room_uuid, None)
        sockets = self._room_sockets.get(room_uuid)
        if sockets is not None:
            sockets.discard(session)
            if not sockets:
                del self._room_sockets[room_uuid]
        login = state.login
        if login is None:
            return
        key = (room_uuid, login)
        member = self._members.get(key)
        if member is None:
            return
        member.sockets.discard(session)
        if member.sockets:
            return
        del self._members[key]
        if member.timer is None:
            return  # already expired: nothing of ours left in the store
        if member.timer.active():
            member.timer.cancel()
        removed = await self._store.remove_user(room_uuid, login, self._clock.seconds(), member.last_touch)
        await self._publish_if_changed(removed)

    # LEAVE -----------------------------------------------------------

    async def _leave(self, session: Session, state: _Socket, access: Access, frame: dict) -> None:
        room_uuid = _joined_room(state, frame, "LEAVE")
        await self._leave_room(session, state, room_uuid)

    # HISTORY ---------------------------------------------------------

    async def _history(self, session: Session, state: _Socket, access: Access, frame: dict) -> None:
        offset, limit = _paging(frame)
        room = await self._find_room(frame, "HISTORY")
        if room is None:
            raise _Refused("HISTORY: no such room")
        self._recheck(session, state, access, "HISTORY", room["Type"], room["RoomTypeObject"], "read")
        room_uuid = room["Uuid"]
        joined = room_uuid in state.rooms
        if joined:
            state.held[room_uuid] = []
        try:
            page = await self._store.page(room_uuid, offset, limit)
            if session not in self._sockets:
                return
            self._recheck(session, state, access, "HISTORY", room["Type"], room["RoomTypeObject"], "read")
        except BaseException:
            state.held.pop(room_uuid, None)
            raise
        frames = [_room_update(room)] + [encode(m) for m in page]
        if limit > 0 and len(page) == limit:
            frames.append(_may_have_more(room_uuid, page, offset + limit, limit))
        if joined and room_uuid in state.rooms:
            self._release_held(session, state, room_uuid, frames)
        else:
            for payload in frames:
                session.send(payload)

    async def _find_room(self, frame: dict, action: str) -> Room | None:
        room = frame.get("Room")
        if isinstance(room, dict) and room.get("Uuid"):
            room_uuid = room["Uuid"]
            if not isinstance(room_uuid, str) or len(room_uuid) > _MAX_FIELD:
                raise _Refused(f"{action}: Room.Uuid must be a string")
            return await self._store.get_room(room_uuid)  # type: ignore[no-any-return]
        type, type_object, _ = _room_spec(frame, action)
        return await self._store.find_room(type, type_object)  # type: ignore[no-any-return]

    # POST ------------------------------------------------------------

    async def _sanitize(self, text: str) -> str:
        """Sanitize on the reactor when it is cheap; a long text with markup can cost a crafted 100+ ms of
        CommonMark parsing, so it goes to a worker thread (the GIL still lets the reactor serve others)."""
        if self._offload is None or len(text) < _OFFLOAD_CHARS or ("<" not in text and "&" not in text):
            return sanitize_markdown(text)
        return await self._offload(sanitize_markdown, text)  # type: ignore[no-any-return]

    async def _post(self, session: Session, state: _Socket, access: Access, frame: dict) -> None:
        message = _message(frame, "POST")
        text = message.get("Message")
        if not isinstance(text, str):
            raise _Refused("POST: Message.Message must be a string")
        if len(text) > self._max_chars:
            raise _Refused(f"POST: message too long ({len(text)} characters, at most {self._max_chars})")
        edit_uuid = message.get("Uuid")
        if edit_uuid is not None and (not isinstance(edit_uuid, str) or len(edit_uuid) > _MAX_FIELD):
            raise _Refused("POST: Message.Uuid must be a string")
        room_uuid = _joined_room(state, frame, "POST")
        clean = await self._sanitize(text)
        if not clean.strip():
            raise _Refused("POST: empty message")
        now = self._clock.seconds()
        if edit_uuid:
            try:
                stored = await self._store.edit_message(room_uuid, edit_uuid, access.login, clean, _rfc3339(now))
            except NoSuchMessage:
                raise _Refused("POST: no such message in this room to edit") from None
            except NotAuthor:
                raise _Refused("POST: cannot edit a message written by someone else") from None
        else:
            stored = {
                "Uuid": str(uuidlib.uuid4()), "RoomUuid": room_uuid, "Message": clean,
                "Author": access.login, "Timestamp": str(int(now)),
            }
            try:
                await self._store.post_message(stored, self._history_cap)
            except NoSuchRoom:
                raise _Refused("POST: the room was deleted") from None
        await self._publish_event({"Message": stored}, "POST")

    # DELETE_MSG ------------------------------------------------------

    async def _delete(self, session: Session, state: _Socket, access: Access, frame: dict) -> None:
        message = _message(frame, "DELETE_MSG")
        message_uuid = message.get("Uuid")
        if not isinstance(message_uuid, str) or not message_uuid:
            raise _Refused("DELETE_MSG: missing Message.Uuid")
        room_uuid = _joined_room(state, frame, "DELETE_MSG")
        try:
            deleted = await self._store.delete_message(room_uuid, message_uuid, access.login)
        except NoSuchMessage:
            raise _Refused("DELETE_MSG: no such message in this room") from None
        except NotAuthor:
            raise _Refused("DELETE_MSG: cannot delete a message written by someone else") from None
        await self._publish_event({"Message": deleted, "Details": "DELETE"}, "DELETE_MSG")

    # ----------------------------------------------------------------- bus

    async def _publish_event(self, event: dict, action: str) -> None:
        try:
            await self._publish(encode(event))
        except Exception:  # noqa: BLE001 - the change is stored; tell the socket the bus failed
            self._log.failure("chat {action}: publishing failed", action=action)
            raise _Refused(f"{action}: saved, but the bus is unavailable: others will see it later") from None

    def _publish_if_changed(self, result: tuple[Room | None, bool]) -> Deferred:
        """Publish the room when a presence change changed its Users; a bus failure is only logged."""
        room, changed = result
        if room is None or not changed:
            return succeed(None)
        return self._publish(encode({"Room": room})).addErrback(self._logged, "publishing a room update")

    def _logged(self, failure: Any, what: str) -> None:
        self._log.failure("chat: {what} failed", failure, what=what)

    def handle(self, event: dict) -> None:
        """A chat-topic event from the bus: broadcast it to this instance's sockets in the room."""
        if not isinstance(event, dict):
            raise MalformedEvent("a chat event must be an object")
        message = field(event, "Message", dict)
        if message is not None:
            room_uuid = field(message, "RoomUuid", str)
            if not room_uuid:
                raise MalformedEvent("Message.RoomUuid must be a non-empty string")
            if field(event, "Details", str, "") == "DELETE":
                payload = encode({"@type": "DELETE_MSG", "Message": message})
            else:
                payload = encode(message)
        else:
            room = field(event, "Room", dict)
            if room is None:
                raise MalformedEvent("a chat event needs a Message or a Room")
            room_uuid = field(room, "Uuid", str)
            if not room_uuid:
                raise MalformedEvent("Room.Uuid must be a non-empty string")
            payload = _room_update(room)
        self._broadcast(room_uuid, payload)

    def _broadcast(self, room_uuid: str, payload: bytes) -> None:
        sessions = self._room_sockets.get(room_uuid)
        if not sessions:
            return
        for session in tuple(sessions):
            state = self._sockets.get(session)
            if state is None or session.access is None:
                continue
            held = state.held.get(room_uuid)
            if held is not None:
                if len(held) < _MAX_HELD:
                    held.append(payload)
                else:
                    self._log.warn("chat: dropped a broadcast held for {session}", session=session)
                continue
            try:
                session.send(payload)
            except Exception:  # noqa: BLE001 - isolate a broken recipient
                self._log.failure("chat: sending to {session} failed", session=session)
            else:
                self.delivered += 1


# --------------------------------------------------------------------------- frame fields


def _room_spec(frame: dict, action: str) -> tuple[str, str, str]:
    """``(Type, RoomTypeObject, RoomLabel)`` of the frame's Room; Type absent means GLOBAL."""
    room = frame.get("Room")
    if room is None:
        raise _Refused(f"{action}: missing Room")
    if not isinstance(room, dict):
        raise _Refused(f"{action}: Room must be an object")
    type = room.get("Type")
    if type is None or type == "":
        type = "GLOBAL"
    if not isinstance(type, str) or type not in ROOM_TYPES:
        raise _Refused(f"{action}: unknown Room.Type {_show(type)}")
    type_object = room.get("RoomTypeObject")
    type_object = "" if type_object is None else type_object
    label = room.get("RoomLabel")
    label = "" if label is None else label
    if not isinstance(type_object, str) or len(type_object) > _MAX_FIELD:
        raise _Refused(f"{action}: Room.RoomTypeObject must be a string of at most {_MAX_FIELD} characters")
    if not isinstance(label, str) or len(label) > _MAX_FIELD:
        raise _Refused(f"{action}: Room.RoomLabel must be a string of at most {_MAX_FIELD} characters")
    if type != "GLOBAL" and not type_object:
        raise _Refused(f"{action}: missing Room.RoomTypeObject")
    return type, type_object, label


def _message(frame: dict, action: str) -> dict:
    message = frame.get("Message")
    if message is None:
        raise _Refused(f"{action}: missing Message")
    if not isinstance(message, dict):
        raise _Refused(f"{action}: Message must be an object")
    return message


def _joined_uuid(state: _Socket, type: str, type_object: str) -> str | None:
    for room_uuid, spec in state.rooms.items():
        if spec == (type, type_object):
            return room_uuid
    return None


def _joined_room(state: _Socket, frame: dict, action: str) -> str:
    """The joined room a frame names, by ``Message.RoomUuid``, ``Room.Uuid`` or ``Room`` type and object."""
    message = frame.get("Message")
    room = frame.get("Room")
    room_uuid: object = None
    if isinstance(message, dict) and message.get("RoomUuid"):
        room_uuid = message["RoomUuid"]
    elif isinstance(room, dict) and room.get("Uuid"):
        room_uuid = room["Uuid"]
    elif room is not None:
        room_uuid = _joined_uuid(state, *_room_spec(frame, action)[:2])
    else:
        raise _Refused(f"{action}: missing Message.RoomUuid or Room")
    if not isinstance(room_uuid, str) or room_uuid not in state.rooms:
        raise _Refused(f"{action}: room not joined")
    return room_uuid


def _paging(frame: dict) -> tuple[int, int]:
    """``(Offset, Limit)`` from the JSON in ``Message.Message``; none given: ``(0, 0)``, the whole history."""
    message = frame.get("Message")
    if message is None:
        return 0, 0
    if not isinstance(message, dict):
        raise _Refused("HISTORY: Message must be an object")
    text = message.get("Message")
    if text is None or text == "":
        return 0, 0
    bad = _Refused('HISTORY: Message.Message must be JSON like {"Offset":0,"Limit":40}')
    if not isinstance(text, str):
        raise bad
    try:
        paging = json.loads(text)
    except ValueError:
        raise bad from None
    if not isinstance(paging, dict):
        raise bad
    values = []
    for name in ("Offset", "Limit"):
        value = paging.get(name, 0)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _Refused(f"HISTORY: {name} must be a non-negative integer")
        values.append(value)
    return values[0], values[1]


def _may_have_more(room_uuid: str, page: list[dict], offset: int, limit: int) -> bytes:
    try:
        oldest = int(page[0].get("Timestamp") or 0)
    except (TypeError, ValueError):
        oldest = 0
    return encode({"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid, "Timestamp": oldest, "Offset": offset, "Limit": limit})
