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
"""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from zope.interface import implementer

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

# Every script returns one JSON document (txredisapi would otherwise turn
# number-looking strings such as a login "007" into ints). Keys, under the
# prefix p: p.."index" (hash "<Type>:<obj>" -> uuid), p.."room:"..u (hash of the
# room fields), p.."users:"..u (hash login -> last seen), p.."presence" (sorted set
# u.."/"..login scored by its deadline: a room uuid never holds "/", a login may),
# p.."order:"..u (list of message uuids, oldest first), p.."msgs:"..u (hash uuid ->
# message JSON), p.."created" (hash login -> rooms it created).
# Keys are derived inside the scripts: fine on one Redis, not on Redis Cluster.

_LUA_ROOM = """
local function room_doc(p, u)
  local fields = redis.call('HGETALL', p..'room:'..u)
  if #fields == 0 then return nil end
  local room = {}
  for i = 1, #fields, 2 do room[fields[i]] = fields[i+1] end
  local users = redis.call('HKEYS', p..'users:'..u)
  return {room = room, users = users}
end
"""

_FIND = _LUA_ROOM + """
local u = redis.call('HGET', ARGV[1]..'index', ARGV[2])
if not u then return false end
return cjson.encode(room_doc(ARGV[1], u))
"""

_GET = _LUA_ROOM + """
local doc = room_doc(ARGV[1], ARGV[2])
if not doc then return false end
return cjson.encode(doc)
"""

# ARGV: prefix, index field, new uuid, type, type object, label, LastUpdated, creator ('' = none), max created
_FIND_OR_CREATE = _LUA_ROOM + """
local p = ARGV[1]
local u = redis.call('HGET', p..'index', ARGV[2])
local created = 0
if not u and ARGV[8] ~= '' then
  local max = tonumber(ARGV[9])
  if max > 0 and tonumber(redis.call('HGET', p..'created', ARGV[8]) or '0') >= max then
    return '{"refused":1}'
  end
  redis.call('HINCRBY', p..'created', ARGV[8], 1)
end
if not u then
  u = ARGV[3]
  created = 1
  redis.call('HSET', p..'index', ARGV[2], u)
  redis.call('HSET', p..'room:'..u, 'Uuid', u, 'Type', ARGV[4], 'RoomTypeObject', ARGV[5],
             'RoomLabel', ARGV[6], 'LastUpdated', ARGV[7])
end
local doc = room_doc(p, u)
doc.changed = created
return cjson.encode(doc)
"""

# ARGV: prefix, room uuid, login, now, until, LastUpdated
_TOUCH = _LUA_ROOM + """
local p, u, login = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p..'room:'..u) == 0 then return false end
local uk, member = p..'users:'..u, u..'/'..login
local seen = redis.call('HGET', uk, login)
local changed = 0
if not seen then changed = 1 end
if not seen or tonumber(seen) < tonumber(ARGV[4]) then redis.call('HSET', uk, login, ARGV[4]) end
local due = redis.call('ZSCORE', p..'presence', member)
if not due or tonumber(due) < tonumber(ARGV[5]) then redis.call('ZADD', p..'presence', ARGV[5], member) end
if changed == 1 then redis.call('HSET', p..'room:'..u, 'LastUpdated', ARGV[6]) end
local doc = room_doc(p, u)
doc.changed = changed
return cjson.encode(doc)
"""

# ARGV: prefix, room uuid, login, idle since ('' = unconditional), LastUpdated
_REMOVE = _LUA_ROOM + """
local p, u = ARGV[1], ARGV[2]
if redis.call('EXISTS', p..'room:'..u) == 0 then return false end
local uk = p..'users:'..u
local seen = redis.call('HGET', uk, ARGV[3])
local changed = 0
if seen and (ARGV[4] == '' or tonumber(seen) <= tonumber(ARGV[4])) then
  redis.call('HDEL', uk, ARGV[3])
  redis.call('ZREM', p..'presence', u..'/'..ARGV[3])
  redis.call('HSET', p..'room:'..u, 'LastUpdated', ARGV[5])
  changed = 1
end
local doc = room_doc(p, u)
doc.changed = changed
return cjson.encode(doc)
"""

# ARGV: prefix, now, limit, LastUpdated
_EXPIRE = _LUA_ROOM + """
local p = ARGV[1]
local zk = p..'presence'
local due = redis.call('ZRANGEBYSCORE', zk, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local seen, rooms = {}, {}
for _, member in ipairs(due) do
  redis.call('ZREM', zk, member)
  local cut = string.find(member, '/', 1, true)
  local u = string.sub(member, 1, cut - 1)
  if redis.call('HDEL', p..'users:'..u, string.sub(member, cut + 1)) == 1 and not seen[u] then
    seen[u] = true
    rooms[#rooms + 1] = u
  end
end
local docs = {}
for _, u in ipairs(rooms) do
  if redis.call('EXISTS', p..'room:'..u) == 1 then
    redis.call('HSET', p..'room:'..u, 'LastUpdated', ARGV[4])
    docs[#docs + 1] = room_doc(p, u)
  end
end
return cjson.encode({rooms = docs, due = #due})
"""

# ARGV: prefix, room uuid, message uuid, message JSON, cap
_POST = """
local p, u = ARGV[1], ARGV[2]
if redis.call('EXISTS', p..'room:'..u) == 0 then return '{"ok":false}' end
local order, msgs = p..'order:'..u, p..'msgs:'..u
redis.call('HSET', msgs, ARGV[3], ARGV[4])
local n = redis.call('RPUSH', order, ARGV[3])
local cap = tonumber(ARGV[5])
while n > cap do
  redis.call('HDEL', msgs, redis.call('LPOP', order))
  n = n - 1
end
return '{"ok":true}'
"""

_LUA_OWNED = """
local function owned(p, u, id, author)
  local raw = redis.call('HGET', p..'msgs:'..u, id)
  if not raw then return nil, '{"error":"missing"}' end
  local m = cjson.decode(raw)
  if m.Author ~= author then return nil, '{"error":"author"}' end
  return m, raw
end
"""

# ARGV: prefix, room uuid, message uuid
_GET_MESSAGE = """
return redis.call('HGET', ARGV[1]..'msgs:'..ARGV[2], ARGV[3])
"""

# ARGV: prefix, room uuid, message uuid, author, new text, updated, max edits (0 = no bound)
_EDIT = _LUA_OWNED + """
local p, u, id = ARGV[1], ARGV[2], ARGV[3]
local m, err = owned(p, u, id, ARGV[4])
if not m then return err end
if type(m.Activity) ~= 'table' then m.Activity = {} end
if type(m.Activity.items) ~= 'table' then m.Activity.items = {} end
local items = m.Activity.items
local max = tonumber(ARGV[7])
if max > 0 and #items >= max then return '{"error":"edits"}' end
items[#items + 1] = {markdown = m.Message or '', updated = ARGV[6]}
m.Message = ARGV[5]
local out = cjson.encode(m)
redis.call('HSET', p..'msgs:'..u, id, out)
return '{"message":' .. out .. '}'
"""

# ARGV: prefix, room uuid, message uuid, author
_DELETE = _LUA_OWNED + """
local p, u, id = ARGV[1], ARGV[2], ARGV[3]
local m, raw = owned(p, u, id, ARGV[4])
if not m then return raw end
redis.call('HDEL', p..'msgs:'..u, id)
redis.call('LREM', p..'order:'..u, 1, id)
return '{"message":' .. raw .. '}'
"""

# ARGV: prefix, room uuid, offset, limit (0 = all)
_PAGE = """
local p, u = ARGV[1], ARGV[2]
local order, msgs = p..'order:'..u, p..'msgs:'..u
local last = redis.call('LLEN', order) - 1 - tonumber(ARGV[3])
if last < 0 then return '[]' end
local first = 0
local limit = tonumber(ARGV[4])
if limit > 0 then first = math.max(0, last - limit + 1) end
local out = {}
for _, id in ipairs(redis.call('LRANGE', order, first, last)) do
  local raw = redis.call('HGET', msgs, id)
  if raw then out[#out + 1] = raw end
end
return '[' .. table.concat(out, ',') .. ']'
"""


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


@implementer(IChatStore)
class RedisChatStore:
    """The shared store on Redis, on one connection (not a pool) so that one instance's commands are
    applied in the order it issued them; every key starts with ``prefix``."""

    def __init__(self, redis: RedisCommands, prefix: str = "wsgw:chat:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def _eval(self, script: str, *args: object) -> Any:
        argv = [self._prefix, *[str(a) for a in args]]
        try:
            reply = await self._redis.run_script(script, (), argv)  # EVALSHA: the body is sent once per connection
        except (txredisapi.ConnectionError, ConnectionLost, ConnectionDone) as e:
            raise StoreUnavailable(str(e) or type(e).__name__) from None
        reply = _text(reply)
        return None if reply is None else json.loads(reply)

    def _run(self, coro: Any) -> Deferred:
        return Deferred.fromCoroutine(coro)

    def find_room(self, type: str, type_object: str) -> Deferred:
        async def run() -> Room | None:
            doc = await self._eval(_FIND, index_key(type, type_object))
            return None if doc is None else _room_from(doc)
        return self._run(run())

    def get_room(self, room_uuid: str) -> Deferred:
        async def run() -> Room | None:
            doc = await self._eval(_GET, room_uuid)
            return None if doc is None else _room_from(doc)
        return self._run(run())

    def find_or_create_room(self, type: str, type_object: str, label: str, now: float, creator: str = "",
                            max_created: int = 0) -> Deferred:
        async def run() -> tuple[Room, bool]:
            doc = await self._eval(
                _FIND_OR_CREATE, index_key(type, type_object), uuidlib.uuid4(), type, type_object, label, stamp(now),
                creator, max_created,
            )
            if "refused" in doc:
                raise TooManyRooms(creator)
            return _room_from(doc), bool(doc["changed"])
        return self._run(run())

    def _changed_room(self, script: str, *args: object) -> Deferred:
        async def run() -> tuple[Room | None, bool]:
            doc = await self._eval(script, *args)
            if doc is None:
                return None, False
            return _room_from(doc), bool(doc["changed"])
        return self._run(run())

    def touch_user(self, room_uuid: str, login: str, now: float, until: float) -> Deferred:
        return self._changed_room(_TOUCH, room_uuid, login, repr(float(now)), repr(float(until)), stamp(now))

    def remove_user(self, room_uuid: str, login: str, now: float, idle_since: float | None = None) -> Deferred:
        since = "" if idle_since is None else repr(float(idle_since))
        return self._changed_room(_REMOVE, room_uuid, login, since, stamp(now))

    def expire_users(self, now: float, limit: int) -> Deferred:
        async def run() -> tuple[list[Room], int]:
            doc = await self._eval(_EXPIRE, repr(float(now)), limit, stamp(now))
            rooms = doc["rooms"]  # cjson encodes {} for an empty table
            return [_room_from(d) for d in rooms] if isinstance(rooms, list) else [], int(doc["due"])
        return self._run(run())

    def post_message(self, message: Message, cap: int) -> Deferred:
        async def run() -> None:
            encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            doc = await self._eval(_POST, message["RoomUuid"], message["Uuid"], encoded, cap)
            if not doc["ok"]:
                raise NoSuchRoom(message["RoomUuid"])
        return self._run(run())

    def _owned(self, script: str, *args: object) -> Deferred:
        async def run() -> Message:
            doc = await self._eval(script, *args)
            if "message" in doc:
                return _fix_activity(doc["message"])
            raise {"author": NotAuthor, "edits": TooManyEdits}.get(doc["error"], NoSuchMessage)(args[1])
        return self._run(run())

    def get_message(self, room_uuid: str, message_uuid: str) -> Deferred:
        async def run() -> Message | None:
            found = await self._eval(_GET_MESSAGE, room_uuid, message_uuid)
            return None if found is None else _fix_activity(found)
        return self._run(run())

    def edit_message(self, room_uuid: str, message_uuid: str, author: str, text: str, updated: str,
                     max_edits: int = 0) -> Deferred:
        return self._owned(_EDIT, room_uuid, message_uuid, author, text, updated, max_edits)

    def delete_message(self, room_uuid: str, message_uuid: str, author: str) -> Deferred:
        return self._owned(_DELETE, room_uuid, message_uuid, author)

    def page(self, room_uuid: str, offset: int, limit: int) -> Deferred:
        async def run() -> list[Message]:
            return [_fix_activity(m) for m in await self._eval(_PAGE, room_uuid, offset, limit)]
        return self._run(run())


def _fix_activity(message: Message) -> Message:
    """Undo cjson's one lossy habit: an empty Lua table comes back as ``{}``, never ``[]``."""
    activity = message.get("Activity")
    if isinstance(activity, dict) and activity.get("items") == {}:
        activity["items"] = []
    return message
