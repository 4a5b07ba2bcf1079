"""The instance registry on Redis (``wsgw.instances.InstanceStore``): one key per live instance, and an index.

Key ``<[operator] key_prefix><instance id>``: the instance's record (JSON,
``wsgw.instances``), set with ``PX`` at each heartbeat for 3 heartbeats and
deleted on a clean stop; a killed instance's key expires. The index, a sorted
set at ``<key_prefix>`` itself (an id is never empty), holds every instance id
with the time of its last heartbeat (ms, the writer's clock), so ``load`` costs
one script over the instances, however many other keys that Redis holds (a
SCAN of the prefix would walk the whole keyspace, chat history included).

``PUT`` sets the record (returning the ``started`` of the one it replaced: ``wsgw.instances``), adds the id to the index and drops index entries over
``STALE_MS`` old (instances that died long ago, never listed since). ``LOAD``
reads the newest ``MAX_INSTANCES`` ids of the index and returns the value of
each one's key when it is a string of at most ``MAX_RECORD_BYTES`` (a huge or
foreign value is never transferred); an id whose key is gone leaves the index
there. The scripts name keys built from the prefix beyond ``KEYS`` (so not for
Redis Cluster, which the gateway does not support).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from wsgw.instances import MAX_INSTANCES, MAX_RECORD_BYTES
from wsgw.redis.connection import RedisCommands
from wsgw.redis.revocations import _text

STALE_MS = 24 * 3600 * 1000  # index entries older than this are dropped by the next heartbeat of any instance

# KEYS[1]: the index, KEYS[2]: the record's key; ARGV: the id, the record, its TTL (ms), now (unix ms). Returns the
# "started" of the record replaced, as written (nil: none, or not a record).
PUT = """
local replaced = false
if redis.call('TYPE', KEYS[2])['ok'] == 'string' then
  replaced = string.match(redis.call('GET', KEYS[2]), '"started":(%-?[%d%.eE%+%-]+)') or false
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[4]) - tonumber(ARGV[5])))
return replaced
"""

# KEYS[1]: the index; ARGV: the key prefix, how many at most, the size cap. Returns id, value, id, value...
LOAD = """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local key = ARGV[1] .. id
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    redis.call('ZREM', KEYS[1], id)
  elseif kind == 'string' and redis.call('STRLEN', key) <= tonumber(ARGV[3]) then
    table.insert(out, id)
    table.insert(out, redis.call('GET', key))
  end
end
return out
"""


class RedisInstances:
    """The records of a deployment's instances under ``prefix``, on one Redis command connection; ``clock`` dates
    the index entries."""

    kind = "redis"

    def __init__(self, redis: RedisCommands, clock: IReactorTime, prefix: str = "wsgw:instances:") -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = prefix

    def key(self, instance: str) -> str:
        """The Redis key of ``instance``'s record (the index is the prefix itself)."""
        return self._prefix + instance

    def put(self, instance: str, record: bytes, ttl: float) -> Deferred[str | None]:
        now = int(self._clock.seconds() * 1000)
        d = self._redis.run_script(PUT, [self._prefix, self.key(instance)],
                                   [instance, record, max(1, int(ttl * 1000)), now, STALE_MS])
        return d.addCallback(lambda replaced: _text(replaced) if replaced else None)

    def remove(self, instance: str) -> Deferred[None]:
        d = self._redis.run_script("redis.call('ZREM', KEYS[1], ARGV[1])\nreturn redis.call('DEL', KEYS[2])",
                                   [self._prefix, self.key(instance)], [instance])
        return d.addCallback(lambda _: None)

    def load(self) -> Deferred[list[tuple[str, bytes]]]:
        d = self._redis.run_script(LOAD, [self._prefix], [self._prefix, MAX_INSTANCES, MAX_RECORD_BYTES])
        return d.addCallback(_pairs)


def _pairs(reply: Any) -> list[tuple[str, bytes]]:
    """``LOAD``'s flat reply as (id, value) pairs."""
    items = list(reply) if isinstance(reply, list) else []
    return [(_text(items[i]), items[i + 1]) for i in range(0, len(items) - 1, 2) if isinstance(items[i + 1], bytes)]
