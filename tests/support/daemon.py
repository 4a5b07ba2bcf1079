"""Starting the real gateway service in-process on loopback, minting tokens, publishing with a plain Redis client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import treq
import txredisapi
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults

from tests.support.redis_server import shared_address, shared_endpoint
from wsgw.config import DEFAULT_TOPICS, config_from_string
from wsgw.service import GatewayService

SECRET = "integration-secret-of-at-least-32-bytes"
SHARED = "shared"
"""``start_daemon(redis=SHARED)``: the Redis the tests share (``tests.support.redis_server.shared_endpoint()``)."""
CONNECT_TIMEOUT = 10.0


def token(login: str, workspaces: list[dict[str, Any]] | None = None, *, profile: str = "standard",
          roles: str = "", ttl: float = 3600, sub: str | None = None, **more: Any) -> str:
    """A token of ``login`` signed with SECRET; ``more``: other claims (``iat``, ``jti``)."""
    claims = {"name": login, "sub": sub or f"uuid-{login}", "profile": profile, "roles": roles,
              "workspaces": workspaces or [], "exp": int(time.time() + ttl), **more}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def workspace(uuid_: str, slug: str, *paths: str) -> dict[str, Any]:
    return {"uuid": uuid_, "slug": slug, "roots": [{"uuid": f"r-{p}", "path": p} for p in paths]}


def channels(prefix: str) -> dict[str, str]:
    return {topic: f"{prefix}.{channel}" for topic, channel in DEFAULT_TOPICS.items()}


async def healthz(port: int) -> int:
    """The status of ``GET /healthz`` on the daemon's public port (127.0.0.1)."""
    response = await treq.get(f"http://127.0.0.1:{port}/healthz")
    await response.content()
    return response.code  # type: ignore[no-any-return]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(daemon: Daemon | int) -> Samples:
    """Every sample of the daemon's /metrics (its operator listener, or that port) as
    ``{(name, sorted labels): value}``."""
    port = daemon if isinstance(daemon, int) else daemon.admin_port
    response = await treq.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    text = (await response.content()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample of ``scrape``'s answer (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class Daemon:
    """One gateway instance listening on an ephemeral loopback port, its channels and chat keys under ``prefix``."""

    def __init__(self, service: GatewayService, prefix: str) -> None:
        self.service = service
        self.prefix = prefix
        self._publisher: Publisher | None = None

    async def publish(self, topic: str, event: Any) -> int:
        """Publish on Redis as an internal service would (``event``: a JSON value, or its bytes/str); returns
        the number of subscribers that got it."""
        return await self.publisher.publish(topic, event)

    @property
    def publisher(self) -> Publisher:
        """The daemon's publisher on Redis (made on first use, closed by ``stop``)."""
        if self._publisher is None:
            self._publisher = Publisher(self.prefix)
        return self._publisher

    async def flood(self, events: Callable[[int], bytes], until: Callable[[], bool], *, topic: str = "tree",
                    slices: int = 400, per_slice: int = 10) -> int:
        """Publish ``events(0)``, ``events(1)``... on the embedded bus, ``per_slice`` per reactor turn, until
        ``until()`` holds (at most ``slices`` slices); returns how many were published."""
        published = 0
        for _ in range(slices):
            for _ in range(per_slice):
                self.service.bus.publish(topic, events(published))
                published += 1
            await task.deferLater(reactor, 0.001, lambda: None)
            if until():
                break
        return published

    @property
    def port(self) -> int:
        return self.service.ports[0].getHost().port

    @property
    def admin_port(self) -> int:
        return self.service.admin_ports[0].getHost().port

    async def stop(self) -> None:
        """Stop the daemon (as SIGTERM would) and close its publisher."""
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        if self.service.running:
            await self.service.stopService()


async def start_daemon(prefix: str, redis: str | None = SHARED, extra: str = "",
                       overrides: dict[str, str] | None = None, admin: str = "") -> Daemon:
    """Start a GatewayService with channels under ``prefix``; ``redis``: a Redis client endpoint, SHARED (the
    shared test Redis, WSGW_TEST_REDIS) or None (the embedded bus). Fails after CONNECT_TIMEOUT seconds when
    Redis does not answer.

    ``extra`` is INI text for sections not written here; ``overrides`` are ``section.key`` values (any section).
    ``admin`` is the operator listener's endpoint: none by default, so that daemons never race for port 5051.
    """
    if redis == SHARED:
        redis = shared_endpoint()
    overrides = {"admin.listen": admin, "chat.key_prefix": f"{prefix}:chat:",
                 "auth.revocation_prefix": f"{prefix}:revoked:", "operator.key_prefix": f"{prefix}:instances:",
                 **(overrides or {})}
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    text = (
        f"[server]\nlisten = tcp:0:interface=127.0.0.1\nredis = {redis or ''}\nshutdown_timeout = 5\n"
        f"[topics]\n{topics}\n"
        f"[delivery]\nbatch_window = 0\n"
        f"{extra}"
    )
    config = config_from_string(text, "<test>", overrides=overrides, environ={"WSGW_HMAC_SECRET": SECRET})
    service = GatewayService(config, reactor)
    service.startService()
    if redis:  # every Redis connection (bus subscriber and publisher, chat store) is up
        try:
            for connected in (service.bus.whenConnected(), service.redis_commands.whenConnected()):
                await connected.addTimeout(CONNECT_TIMEOUT, reactor)
        except Exception:
            await service.stopService()
            raise
    return Daemon(service, prefix)


class Publisher:
    """A plain Redis client publishing events as an internal service would, on the shared test Redis or on
    127.0.0.1:``port``."""

    def __init__(self, prefix: str, port: int | None = None) -> None:
        self._channels = channels(prefix)
        self._host, self._port = shared_address() if port is None else ("127.0.0.1", port)
        self._conn: Any = None

    async def _connect(self) -> Any:
        connecting = txredisapi.Connection(self._host, self._port, reconnect=False)
        return await connecting.addTimeout(CONNECT_TIMEOUT, reactor)

    async def publish(self, topic: str, event: Any) -> int:
        if self._conn is None:
            self._conn = await self._connect()
        payload = event if isinstance(event, (bytes, str)) else json.dumps(event)
        return await self._conn.publish(self._channels[topic], payload)

    async def publish_many(self, topic: str, events: list[Any]) -> None:
        """Publish every event at once: the commands are pipelined, their answers awaited together."""
        if self._conn is None:
            self._conn = await self._connect()
        channel = self._channels[topic]
        sent = [self._conn.publish(channel, e if isinstance(e, (bytes, str)) else json.dumps(e)) for e in events]
        await gatherResults(sent)

    async def exists(self, *keys: str) -> bool:
        """Whether every one of ``keys`` is in Redis."""
        if self._conn is None:
            self._conn = await txredisapi.Connection("127.0.0.1", self._port, reconnect=False)
        return all([await self._conn.exists(key) for key in keys])

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None


StartGateway = Callable[..., Awaitable[Daemon]]
"""The ``gateway`` fixture (tests/conftest.py): ``await gateway(prefix=None, **start_daemon_options)``."""
