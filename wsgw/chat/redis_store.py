"""The shared chat store: ``IChatStore`` on Redis, for every gateway instance sharing users.

Every change that two instances could race on is one Lua script run by EVALSHA
(find-or-create, presence, posting with the cap, edit, delete), so it is atomic
across instances; page reads are scripts too. Presence is stored per room as
``login -> last seen`` (the caller's clock seconds), and every presence's
deadline in one sorted set: ``touch_user`` refreshes both, ``remove_user``
removes one unless another instance refreshed it after ``idle_since``, and
``expire_users`` (every instance's sweep) removes the first ones past their
deadline with an index range, so the presence of an instance that died ends
without scanning any room. A connection failure is ``StoreUnavailable``.

A change may time out after it was sent, and Redis still apply it when it
resumes: so every change is idempotent, and a change with no answer fails with
``OutcomeUnknown`` whose ``outcome`` fires once Redis answered one of the runs
this instance sends until then (issue 11, section 5). A message change and a
sweep keep their first answer under ``done:<id>`` (``DONE_TTL`` s; the id chosen
before the first call: a posted message's Uuid, else a fresh one), in a few
bytes, since a peer repeats changes: an edit keeps a mark and a rerun gets the
message as it is then, a delete keeps the message's ids (not its text), a sweep
that removed nothing keeps nothing. A presence
change and find-or-create are idempotent by nature and keep no key (JOIN and
PING are frequent); their outcome in doubt says ``changed``. A change sent while
the connection is down was not sent: ``StoreUnavailable``.
"""

from __future__ import annotations

import functools
import json
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import deferLater
from zope.interface import implementer

from wsgw.chat import model
from wsgw.chat import redis_scripts as scripts
from wsgw.chat.model import (
    Message,
    NoSuchMessage,
    NoSuchRoom,
    NotAuthor,
    Room,
    StoreUnavailable,
    TooManyEdits,
    TooManyRooms,
    index_key,
    stamp,
)
from wsgw.interfaces import IChatStore
from wsgw.redis.connection import RedisCommands

DONE_TTL = 600  # seconds a change's answer is kept under its id, to answer a run of it sent again
MAX_IN_DOUBT = 1000  # changes without an answer this instance sends again at once; then changes are refused
RESEND_DELAY = 0.2  # seconds between two runs of a change in doubt, at least

def _text(reply: Any) -> Any:
    if isinstance(reply, bytes):
        return reply.decode("utf-8")
    return reply


def _room_from(doc: dict[str, Any]) -> Room:
    room = doc["room"]
    users = doc.get("users")
    return {
        "Uuid": room.get("Uuid", ""),
        "Type": room.get("Type", "GLOBAL"),
        "RoomTypeObject": room.get("RoomTypeObject", ""),
        "RoomLabel": room.get("RoomLabel", ""),
        "Users": sorted(users) if isinstance(users, list) else [],  # cjson encodes {} for an empty table
        "LastUpdated": room.get("LastUpdated", ""),
    }


class _NoAnswer(Exception):
    """A change was sent, and no answer came."""


_REPLAYS = {scripts.EDIT: scripts.EDIT_REPLAY}  # how a rerun is answered from what the first run kept


@functools.cache
def _idempotent(body: str) -> str:
    """The change script ``body`` made idempotent on an id given as its last ARGV (issue 11, section 5)."""
    replay = _REPLAYS.get(body, "")
    return scripts.IDEMPOTENT.replace("DONE_TTL", str(DONE_TTL)).replace("REPLAY", replay).replace("BODY", body)


@implementer(IChatStore)
class RedisChatStore:
    """The shared store on Redis, on one connection (not a pool) so that one instance's commands are
    applied in the order it issued them (but a change in doubt, sent again, may land after later ones);
    every key starts with ``prefix``. At most ``max_in_doubt`` changes are in doubt at once (0: no cap):
    past it a change is refused unsent (StoreUnavailable); changes sent and not answered yet count too, since
    each may go in doubt. ``in_doubt``, ``resent`` and ``refused`` are read by /metrics."""

    def __init__(self, redis: RedisCommands, prefix: str = "wsgw:chat:", max_in_doubt: int = MAX_IN_DOUBT) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_in_doubt = max_in_doubt
        self.in_doubt = 0  # changes sent without an answer yet, sent again until one is answered (metrics)
        self.resent = 0  # runs of changes in doubt sent again (metrics)
        self.refused = 0  # changes refused unsent: max_in_doubt changes were in doubt or unanswered (metrics)
        self._unanswered = 0  # changes sent and not answered yet: each may go in doubt

    async def _send(self, script: str, argv: list[str], change: bool) -> Any:
        """Run a script; StoreUnavailable when it could not be sent, _NoAnswer when sent but not answered."""
        if not self._redis.connected:
            raise StoreUnavailable(f"Redis {self._redis.role} is not connected")
        try:
            reply = await self._redis.run_script(script, (), argv)  # EVALSHA: the body is sent once per connection
        except (txredisapi.ConnectionError, ConnectionLost, ConnectionDone) as e:
            reason = str(e) or type(e).__name__
            raise (_NoAnswer if change else StoreUnavailable)(reason) from None
        reply = _text(reply)
        return None if reply is None else json.loads(reply)

    async def _eval(self, script: str, *args: object) -> Any:
        return await self._send(script, [self._prefix, *[str(a) for a in args]], False)

    def _change(self, script: str, convert: Callable[[Any], Any], *args: object, id: str | None = None,
                late: Callable[[Any], Any] | None = None) -> Deferred:
        """Run a change script made idempotent on ``id`` (default: a fresh one); fires ``convert(answer)``.
        Fails with StoreUnavailable when nothing was sent, OutcomeUnknown when no answer came. With ``late``
        (a script idempotent by nature) no answer is kept, and a change in doubt has ``late(answer)``."""
        if late is None:
            script = _idempotent(script)
            argv = [self._prefix, *[str(a) for a in args], id or str(uuidlib.uuid4())]
        else:
            argv = [self._prefix, *[str(a) for a in args]]

        async def run() -> Any:
            if self._max_in_doubt and self.in_doubt + self._unanswered >= self._max_in_doubt:
                self.refused += 1
                raise StoreUnavailable(f"{self.in_doubt + self._unanswered} changes wait for Redis to answer")
            self._unanswered += 1
            try:
                doc = await self._send(script, argv, True)
            except _NoAnswer as e:  # (the resend counts in in_doubt from its start, before _unanswered drops)
                outcome = Deferred.fromCoroutine(self._resend(script, argv)).addCallback(late or convert)
                raise model.OutcomeUnknown(str(e), outcome) from None
            finally:
                self._unanswered -= 1
            return convert(doc)
        return self._run(run())

    async def _resend(self, script: str, argv: list[str]) -> Any:
        """Send a change in doubt again (same id) until Redis answers one run; its answer."""
        self.in_doubt += 1
        try:
            while True:
                await deferLater(self._redis.reactor, RESEND_DELAY, lambda: None)
                await self._redis.whenConnected()  # CancelledError when the connection is stopped
                try:
                    self.resent += 1
                    return await self._send(script, argv, True)
                except (_NoAnswer, StoreUnavailable):
                    continue
        finally:
            self.in_doubt -= 1

    def _run(self, coro: Any) -> Deferred:
        return Deferred.fromCoroutine(coro)

    def find_room(self, type: str, type_object: str) -> Deferred:
        async def run() -> Room | None:
            doc = await self._eval(scripts.FIND, index_key(type, type_object))
            return None if doc is None else _room_from(doc)
        return self._run(run())

    def get_room(self, room_uuid: str) -> Deferred:
        async def run() -> Room | None:
            doc = await self._eval(scripts.GET, room_uuid)
            return None if doc is None else _room_from(doc)
        return self._run(run())

    def find_or_create_room(self, type: str, type_object: str, label: str, now: float, creator: str = "",
                            max_created: int = 0) -> Deferred:
        def convert(doc: Any, late: bool = False) -> tuple[Room | None, bool]:
            if doc is not None and "refused" in doc:
                raise TooManyRooms(creator)
            return _changed_from(doc, late)
        return self._change(scripts.FIND_OR_CREATE, convert, index_key(type, type_object), uuidlib.uuid4(), type,
                            type_object, label, stamp(now), creator, max_created,
                            late=functools.partial(convert, late=True))

    def _changed_room(self, script: str, *args: object) -> Deferred:
        return self._change(script, _changed_from, *args, late=_changed_late)

    def touch_user(self, room_uuid: str, login: str, now: float, until: float) -> Deferred:
        return self._changed_room(scripts.TOUCH, room_uuid, login, repr(float(now)), repr(float(until)), stamp(now))

    def remove_user(self, room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred:
        since = "" if idle_since is None else repr(float(idle_since))
        return self._changed_room(scripts.REMOVE, room_uuid, login, since, stamp(now))

    def expire_users(self, now: float, limit: int) -> Deferred:
        return self._change(scripts.EXPIRE, _expired_from, repr(float(now)), limit, stamp(now))

    def post_message(self, message: Message, cap: int) -> Deferred:
        def convert(doc: Any) -> None:
            if not doc["ok"]:
                raise NoSuchRoom(message["RoomUuid"])
        encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        return self._change(scripts.POST, convert, message["RoomUuid"], message["Uuid"], encoded, cap, id=message["Uuid"])

    def get_message(self, room_uuid: str, message_uuid: str) -> Deferred:
        async def run() -> Message | None:
            found = await self._eval(scripts.GET_MESSAGE, room_uuid, message_uuid)
            return None if found is None else _fix_activity(found)
        return self._run(run())

    def edit_message(self, room_uuid: str, message_uuid: str, author: str, text: str, updated: str,
                     max_edits: int = 0) -> Deferred:
        return self._change(scripts.EDIT, _owned_from(message_uuid), room_uuid, message_uuid, author, text, updated,
                            max_edits)

    def delete_message(self, room_uuid: str, message_uuid: str, author: str) -> Deferred:
        return self._change(scripts.DELETE, _owned_from(message_uuid), room_uuid, message_uuid, author)

    def page(self, room_uuid: str, offset: int, limit: int) -> Deferred:
        async def run() -> list[Message]:
            return [_fix_activity(m) for m in await self._eval(scripts.PAGE, room_uuid, offset, limit)]
        return self._run(run())


def _changed_from(doc: Any, late: bool = False) -> tuple[Room | None, bool]:
    """A presence change's answer; ``late``: of one in doubt, ``changed`` as a run not heard may have changed."""
    return (None, False) if doc is None else (_room_from(doc), late or bool(doc["changed"]))


_changed_late = functools.partial(_changed_from, late=True)


def _expired_from(doc: Any) -> tuple[list[Room], int]:
    rooms = doc["rooms"]  # cjson encodes {} for an empty table
    return [_room_from(d) for d in rooms] if isinstance(rooms, list) else [], int(doc["due"])


def _owned_from(message_uuid: str) -> Callable[[Any], Message]:
    """What an edit or delete answers: the message, or the error of a missing or foreign one."""
    def convert(doc: Any) -> Message:
        if "message" in doc:
            return _fix_activity(doc["message"])
        raise {"author": NotAuthor, "edits": TooManyEdits}.get(doc["error"], NoSuchMessage)(message_uuid)
    return convert


def _fix_activity(message: Message) -> Message:
    """Undo cjson's one lossy habit: an empty Lua table comes back as ``{}``, never ``[]``."""
    activity = message.get("Activity")
    if isinstance(activity, dict) and activity.get("items") == {}:
        activity["items"] = []
    return message
