"""The Lua scripts of the Redis chat store (``wsgw.chat.redis_store``), one per atomic change or read.

Every script returns one JSON document (txredisapi would otherwise turn
number-looking strings such as a login "007" into ints). Keys, under the
prefix p: p.."index" (hash "<Type>:<obj>" -> uuid), p.."room:"..u (hash of the
room fields), p.."users:"..u (hash login -> last seen), p.."presence" (sorted set
u.."/"..login scored by its deadline: a room uuid never holds "/", a login may),
p.."order:"..u (list of message uuids, oldest first), p.."msgs:"..u (hash uuid ->
message JSON), p.."created" (hash login -> rooms it created).
Keys are derived inside the scripts: fine on one Redis, not on Redis Cluster.
"""

LUA_ROOM = """
local function room_doc(p, u)
  local fields = redis.call('HGETALL', p..'room:'..u)
  if #fields == 0 then return nil end
  local room = {}
  for i = 1, #fields, 2 do room[fields[i]] = fields[i+1] end
  local users = redis.call('HKEYS', p..'users:'..u)
  return {room = room, users = users}
end
"""

FIND = LUA_ROOM + """
local u = redis.call('HGET', ARGV[1]..'index', ARGV[2])
if not u then return false end
return cjson.encode(room_doc(ARGV[1], u))
"""

GET = LUA_ROOM + """
local doc = room_doc(ARGV[1], ARGV[2])
if not doc then return false end
return cjson.encode(doc)
"""

# ARGV: prefix, index field, new uuid, type, type object, label, LastUpdated, creator ('' = none), max created
FIND_OR_CREATE = LUA_ROOM + """
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
TOUCH = LUA_ROOM + """
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
REMOVE = LUA_ROOM + """
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
EXPIRE = LUA_ROOM + """
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
if #due == 0 then keep = false end  -- (run as a change: nothing to answer a rerun with)
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
POST = """
local p, u = ARGV[1], ARGV[2]
if redis.call('EXISTS', p..'room:'..u) == 0 then return '{"ok":false}' end
local order, msgs = p..'order:'..u, p..'msgs:'..u
if redis.call('HSETNX', msgs, ARGV[3], ARGV[4]) == 0 then return '{"ok":true}' end
local n = redis.call('RPUSH', order, ARGV[3])
local cap = tonumber(ARGV[5])
while n > cap do
  redis.call('HDEL', msgs, redis.call('LPOP', order))
  n = n - 1
end
return '{"ok":true}'
"""

LUA_OWNED = """
local function owned(p, u, id, author)
  local raw = redis.call('HGET', p..'msgs:'..u, id)
  if not raw then return nil, '{"error":"missing"}' end
  local m = cjson.decode(raw)
  if m.Author ~= author then return nil, '{"error":"author"}' end
  return m, raw
end
"""

# ARGV: prefix, room uuid, message uuid
GET_MESSAGE = """
return redis.call('HGET', ARGV[1]..'msgs:'..ARGV[2], ARGV[3])
"""

# ARGV: prefix, room uuid, message uuid, author, new text, updated, max edits (0 = no bound)
EDIT = LUA_OWNED + """
local p, u, id = ARGV[1], ARGV[2], ARGV[3]
local m, raw = owned(p, u, id, ARGV[4])
if not m then return raw end
keep = '1'  -- (run as a change: a rerun gets the message as it is then, EDIT_REPLAY)
if m.Message == ARGV[5] then return '{"message":' .. raw .. '}' end
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
DELETE = LUA_OWNED + """
local p, u, id = ARGV[1], ARGV[2], ARGV[3]
local m, raw = owned(p, u, id, ARGV[4])
if not m then return raw end
redis.call('HDEL', p..'msgs:'..u, id)
redis.call('LREM', p..'order:'..u, 1, id)
keep = cjson.encode({message = {Uuid = id, RoomUuid = u, Author = m.Author}})  -- (run as a change: no text kept)
return '{"message":' .. raw .. '}'
"""

# What a rerun of an EDIT gets: the message as it is now (its answer was kept as '1', not the whole message).
EDIT_REPLAY = """
if answered == '1' then
  local raw = redis.call('HGET', ARGV[1]..'msgs:'..ARGV[2], ARGV[3])
  if not raw then return '{"error":"missing"}' end
  return '{"message":' .. raw .. '}'
end
"""

# Makes a change script idempotent on an id given as its last ARGV (issue 11, section 5): the first run's
# answer is kept under done:<id>, and a rerun gets it (after REPLAY, which may answer from it instead). BODY
# may set `keep`: what to keep instead of its answer (small: a peer repeats changes), or false for nothing.
IDEMPOTENT = """
local done = ARGV[1]..'done:'..ARGV[#ARGV]
local answered = redis.call('GET', done)
if answered then
REPLAY
  return answered ~= '' and answered
end
local keep
local answer = (function()
BODY
end)()
if keep ~= false then redis.call('SET', done, keep or answer or '', 'EX', DONE_TTL) end
return answer
"""


# ARGV: prefix, room uuid, offset, limit (0 = all)
PAGE = """
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
