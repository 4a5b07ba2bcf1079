"""The instance registry on Redis (``wsgw.instances.InstanceStore``): one key per live instance.

Key ``<[operator] key_prefix><instance id>``, value the instance's record (JSON,
``wsgw.instances``), set with ``SET ... PX`` at each heartbeat for 3 heartbeats
and deleted on a clean stop; a killed instance's key expires. ``load`` walks
the prefix with SCAN (``SCAN_COUNT`` keys a step, at most ``MAX_INSTANCES``
keys) and reads each step's values with one Lua script (``READ``) that returns
only string values of at most ``MAX_RECORD_BYTES`` (an empty string for any
other key: gone, too big, another type), so a huge or foreign key under the
prefix is never transferred.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from wsgw.instances import MAX_INSTANCES, MAX_RECORD_BYTES
from wsgw.redis.connection import RedisCommands
from wsgw.redis.revocations import _glob_escaped, _text

SCAN_COUNT = 200
MAX_SCAN_STEPS = 100  # SCAN calls per load at most (a prefix shared with many other keys)

# KEYS: the keys found; ARGV[1]: the size cap. Returns each key's value, or '' (not a string, or over the cap).
READ = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = ''
  if redis.call('TYPE', key)['ok'] == 'string' and redis.call('STRLEN', key) <= tonumber(ARGV[1]) then
    out[i] = redis.call('GET', key) or ''
  end
end
return out
"""


class RedisInstances:
    """The records of a deployment's instances under ``prefix``, on one Redis command connection."""

    kind = "redis"

    def __init__(self, redis: RedisCommands, prefix: str = "wsgw:instances:") -> None:
        self._redis = redis
        self._prefix = prefix

    def key(self, instance: str) -> str:
        return self._prefix + instance

    def put(self, instance: str, record: bytes, ttl: float) -> Deferred[None]:
        d = self._redis.execute_command("SET", self.key(instance), record, "PX", max(1, int(ttl * 1000)))
        return d.addCallback(lambda _: None)

    def remove(self, instance: str) -> Deferred[None]:
        return self._redis.execute_command("DEL", self.key(instance)).addCallback(lambda _: None)

    def load(self) -> Deferred[list[tuple[str, bytes]]]:
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> list[tuple[str, bytes]]:
        found: dict[str, bytes] = {}
        pattern = _glob_escaped(self._prefix) + "*"
        cursor = "0"
        for _ in range(MAX_SCAN_STEPS):
            reply: Any = await self._redis.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            cursor = _text(reply[0])
            keys = [_text(k) for k in reply[1]][:MAX_INSTANCES - len(found)]
            if keys:
                values = await self._redis.run_script(READ, keys, [MAX_RECORD_BYTES])
                for key, value in zip(keys, values, strict=True):
                    if isinstance(value, bytes) and value:
                        found[key[len(self._prefix):]] = value
            if cursor == "0" or len(found) >= MAX_INSTANCES:
                break
        return list(found.items())
