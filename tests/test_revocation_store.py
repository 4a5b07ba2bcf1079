"""The revocations on Redis (``wsgw.redis.revocations``), on the real server: one key per entry, the later ``before``
kept, expiring with the entry, loaded back in SCAN steps."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import new_prefix
from tests.support.redis_server import shared_endpoint
from tests.support.waiting import eventually
from wsgw.redis import revocations as module
from wsgw.redis.connection import RedisCommands
from wsgw.redis.revocations import RedisRevocationStore
from wsgw.revocations import Revocation


@pytest_twisted.async_yield_fixture
async def redis() -> AsyncIterator[RedisCommands]:
    commands = RedisCommands(reactor, shared_endpoint())
    commands.startService()
    await commands.whenConnected().addTimeout(10, reactor)
    yield commands
    await commands.stopService()


@pytest_twisted.ensureDeferred
async def test_saved_revocations_load_back_and_the_later_before_is_kept(redis: RedisCommands) -> None:
    """Each kind and key is one key holding ``before``; saving an earlier before changes nothing, a later one
    replaces it (from any instance); keys and logins with ':' or glob characters round-trip."""
    prefix = f"{new_prefix()}:rev[*]:"
    store = RedisRevocationStore(redis, prefix)
    later = time.time() + 3600
    try:
        await store.save(Revocation("login", "alice:x*", 1000.5), later)
        await store.save(Revocation("login", "alice:x*", 900.0), later)  # earlier: kept 1000.5
        await store.save(Revocation("sub", "007", 50.0), later)
        await store.save(Revocation("sub", "007", 60.0), later)  # later: replaces
        await store.save(Revocation("jti", "j1", 10.0), later)
        other = RedisRevocationStore(redis, f"{prefix}x")  # a prefix extending ours holds nothing of ours
        assert await other.load() == []
        loaded = await store.load()
        assert sorted(loaded, key=lambda r: r.kind) == [Revocation("jti", "j1", 10.0),
                                                        Revocation("login", "alice:x*", 1000.5),
                                                        Revocation("sub", "007", 60.0)]
        assert await redis.execute_command("GET", f"{prefix}login:alice:x*") in (b"1000.5", "1000.5", 1000.5)
    finally:
        await redis.execute_command("DEL", *[f"{prefix}{k}" for k in ("login:alice:x*", "sub:007", "jti:j1")])


@pytest_twisted.ensureDeferred
async def test_an_entry_expires_at_its_time_and_a_foreign_key_is_skipped(redis: RedisCommands) -> None:
    prefix = f"{new_prefix()}:revoked:"
    store = RedisRevocationStore(redis, prefix)
    await store.save(Revocation("login", "alice", 1.0), time.time() + 0.3)
    pttl = await redis.execute_command("PTTL", f"{prefix}login:alice")
    assert 0 < pttl <= 300
    await redis.execute_command("SET", f"{prefix}login:bob", "not a number", "PX", 5000)
    await redis.execute_command("SET", f"{prefix}nonsense:bob", "5", "PX", 5000)
    try:
        async def gone() -> bool:
            return await store.load() == []

        await eventually(gone, "the entry to expire", timeout=5)
        assert store.skipped >= 2
    finally:
        await redis.execute_command("DEL", f"{prefix}login:bob", f"{prefix}nonsense:bob")


@pytest_twisted.ensureDeferred
async def test_many_entries_load_in_bounded_steps(redis: RedisCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    """SCAN with a small COUNT walks every entry (several steps, one MGET each)."""
    prefix = f"{new_prefix()}:revoked:"
    store = RedisRevocationStore(redis, prefix)
    monkeypatch.setattr(module, "SCAN_COUNT", 7)
    try:
        for i in range(40):
            await store.save(Revocation("login", f"user{i}", float(i)), time.time() + 60)
        loaded = await store.load()
        assert sorted(r.key for r in loaded) == sorted(f"user{i}" for i in range(40))
    finally:
        await redis.execute_command("DEL", *[f"{prefix}login:user{i}" for i in range(40)])
