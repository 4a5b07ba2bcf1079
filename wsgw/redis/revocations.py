"""The revocations of every instance: ``IRevocationStore`` on Redis (PROTOCOL.md §3.1).

One key per revocation, ``<prefix><kind>:<key>`` (a kind never holds ``:``,
a key may), holding its ``before`` (unix seconds, as text) and expiring at
``before + max_token_lifetime`` (the caller's ``expires``). ``save`` is one Lua
script (``SAVE``) that keeps the later ``before`` when two instances store the
same kind and key, and its expiry with it. ``load`` walks the prefix with SCAN
(``SCAN_COUNT`` keys a step) and reads each step's values with one MGET, so
neither blocks Redis for long, whatever the number of entries. A value that is
not a number, or a key of an unknown kind, is skipped (and counted).
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from wsgw.interfaces import IRevocationStore
from wsgw.redis.connection import RedisCommands
from wsgw.revocations import Revocation

SCAN_COUNT = 500  # keys SCAN looks at per step (and values per MGET at most)

# KEYS[1]: the entry's key; ARGV: before (text), expires (unix milliseconds). Returns 1 when stored, 0 when a
# later (or the same) before was kept already.
SAVE = """
local old = tonumber(redis.call('GET', KEYS[1]) or '')
if old and old >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 1
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _glob_escaped(prefix: str) -> str:
    """``prefix`` with the glob characters of SCAN MATCH escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)


@implementer(IRevocationStore)
class RedisRevocationStore:
    """Revocations under ``prefix`` on one Redis command connection; ``skipped`` counts the entries ``load``
    could not read (a foreign key under the prefix, a value that is not a number)."""

    def __init__(self, redis: RedisCommands, prefix: str = "wsgw:revoked:") -> None:
        self._redis = redis
        self._prefix = prefix
        self.skipped = 0

    def key(self, revocation: Revocation) -> str:
        """The Redis key of ``revocation``'s kind and key."""
        return f"{self._prefix}{revocation.kind}:{revocation.key}"

    def save(self, revocation: Revocation, expires: float) -> Deferred[None]:
        if not math.isfinite(revocation.before) or not math.isfinite(expires):
            raise ValueError("a revocation's before and expiry must be finite")
        d = self._redis.run_script(SAVE, [self.key(revocation)], [repr(float(revocation.before)),
                                                                  str(max(1, int(expires * 1000)))])
        return d.addCallback(lambda _: None)

    def load(self) -> Deferred[list[Revocation]]:
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> list[Revocation]:
        found: list[Revocation] = []
        pattern = _glob_escaped(self._prefix) + "*"
        cursor = "0"
        while True:
            reply = await self._redis.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            cursor, keys = _text(reply[0]), [_text(k) for k in reply[1]]
            if keys:
                values = await self._redis.execute_command("MGET", *keys)
                for key, value in zip(keys, values, strict=True):
                    revocation = self._parse(key, value)
                    if revocation is not None:
                        found.append(revocation)
            if cursor == "0":
                return found

    def _parse(self, key: str, value: Any) -> Revocation | None:
        if value is None:  # expired between SCAN and MGET
            return None
        kind, _, name = key[len(self._prefix):].partition(":")
        try:
            before = float(_text(value))
            if not math.isfinite(before):
                raise ValueError(before)
            return Revocation(kind, name, before)
        except ValueError:
            self.skipped += 1
            return None
