"""``wsgw-publish TOPIC FILE|-``: put one event on the gateway's bus, for scripts and demos.

It reads the daemon's own settings (``--config``, the same INI file): with a
Redis configured it PUBLISHes on the topic's channel as an internal service
would; without one (the embedded bus of ``make run``) it POSTs the event to the
operator listener's ``/publish/<topic>`` with the ``[admin]
publish_token_file`` token. The token-verification keys of the file are not
needed and not read. The event is checked to be a JSON object before anything
is sent; the token is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wsgw.config import Config, ConfigError, config_from_string

TIMEOUT = 10.0


class PublishError(Exception):
    """Publishing failed; the message says why."""


def load_config(path: str | None, redis: str | None = None, environ: dict[str, str] | None = None,
                admin_listen: str | None = None) -> Config:
    """The daemon's configuration without its token-verification keys (which publishing does not need);
    ``redis`` and ``admin_listen`` override ``[server] redis`` and ``[admin] listen`` as twistd's options do."""
    overrides = {"auth.algorithms": "HS256", "auth.hmac_secret_file": "", "auth.public_key_file": "",
                 "auth.oidc_issuer": ""}
    if redis is not None:
        overrides["server.redis"] = redis
    if admin_listen is not None:
        overrides["admin.listen"] = admin_listen
    env = {**(os.environ if environ is None else environ), "WSGW_HMAC_SECRET": "not-used-by-wsgw-publish"}
    if path is None:
        return config_from_string("", "<defaults>", overrides, env)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    return config_from_string(text, path, overrides, env)


def check_event(topic: str, payload: bytes, config: Config) -> None:
    """PublishError unless ``topic`` is a configured topic of internal services (not the gateway's own
    ``control``) and ``payload`` is a JSON object."""
    topics = [t for t in config.topics if t != "control"]
    if topic not in topics:
        raise PublishError(f"unknown topic {topic!r}: one of {', '.join(topics)}")
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise PublishError(f"the event is not JSON: {e}") from None
    if not isinstance(event, dict):
        raise PublishError("the event must be a JSON object")


async def publish(reactor: Any, config: Config, topic: str, payload: bytes, timeout: float = TIMEOUT) -> str:
    """Publish ``payload`` on ``topic`` the way ``config`` says; returns a one-line report."""
    check_event(topic, payload, config)
    if config.redis:
        return await _publish_redis(reactor, config, topic, payload, timeout)
    if not config.admin_listen:
        raise PublishError(f"{config.source}: no [server] redis and no [admin] listen: nothing to publish to")
    if config.publish_token is None:
        raise PublishError(f"{config.source}: without Redis, publishing goes through the operator listener's "
                           "/publish, which needs [admin] publish_token_file")
    return await _publish_http(reactor, config.admin_listen[0], config.publish_token, topic, payload, timeout)


async def _publish_redis(reactor: Any, config: Config, topic: str, payload: bytes, timeout: float) -> str:
    from wsgw.redis.connection import RedisCommands

    channel = config.topics[topic]
    redis = RedisCommands(reactor, config.redis, password=config.redis_password, db=config.redis_db,
                          reply_timeout=timeout)
    redis.startService()
    try:
        ready = redis.whenConnected()
        ready.addTimeout(timeout, reactor)
        try:
            await ready
        except Exception:
            raise PublishError(f"Redis at {config.redis} did not answer within {timeout:g} s"
                               + (f": {redis.problem}" if redis.problem else "")) from None
        try:
            receivers = await redis.execute_command("PUBLISH", channel, payload)
        except Exception as e:  # noqa: BLE001 - a stalled or lost Redis: one line, not a traceback
            raise PublishError(f"Redis at {config.redis} did not publish: {e}") from None
    finally:
        await redis.stopService()
    return f"published {len(payload)} bytes on {channel} ({receivers} subscribed gateways)"


@implementer(IAgentEndpointFactory)
class FixedEndpoint:
    """Every request goes to one client endpoint (the operator listener), whatever the URL's host."""

    def __init__(self, reactor: Any, description: str) -> None:
        self._endpoint = clientFromString(reactor, description)

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


async def _publish_http(reactor: Any, listen: str, token: bytes, topic: str, payload: bytes, timeout: float) -> str:
    client, host = client_endpoint(listen, timeout)
    agent = Agent.usingEndpointFactory(reactor, FixedEndpoint(reactor, client))
    url = f"http://{host}/publish/{topic}".encode()
    headers: dict[bytes | str, list[bytes | str]] = {b"authorization": [b"Bearer " + token],
                                                     b"content-type": [b"application/json"]}
    try:
        response = await treq.post(url, data=payload, headers=headers, agent=agent, timeout=timeout)
        body = await response.content()
    except Exception as e:
        raise PublishError(f"the operator listener ({listen}) did not answer: {e}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")[:200]}
    if response.code != 200:
        raise PublishError(f"the gateway answered {response.code}: {answer.get('error', answer)}")
    return f"published {answer.get('bytes', len(payload))} bytes on topic {topic} through {listen}"


def _split(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons, unescaping ``\\:``."""
    parts, current, chars = [], "", iter(description)
    for ch in chars:
        if ch == "\\":
            current += next(chars, "")
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def client_endpoint(listen: str, timeout: float = TIMEOUT) -> tuple[str, str]:
    """The client endpoint description that reaches server endpoint ``listen``, and a Host for the URL.

    ``tcp:5051:interface=127.0.0.1`` -> ``tcp:host=127.0.0.1:port=5051``; a wildcard interface means loopback;
    ``unix:/run/wsgw.sock`` -> ``unix:path=/run/wsgw.sock``. TLS listeners are refused (not supported here).
    """
    kind, *rest = _split(listen)
    positional = [p for p in rest if "=" not in p]
    options = dict(p.split("=", 1) for p in rest if "=" in p)
    if kind in ("tcp", "tcp6"):
        port = options.get("port") or (positional[0] if positional else "")
        if not port.isdigit():
            raise PublishError(f"cannot tell the port of the operator listener {listen!r}")
        interface = options.get("interface", "")
        if interface in ("", "0.0.0.0", "::"):
            interface = "::1" if kind == "tcp6" else "127.0.0.1"
        escaped = interface.replace(":", "\\:")
        host = f"[{interface}]" if ":" in interface else interface
        return f"{kind}:host={escaped}:port={port}:timeout={int(timeout)}", f"{host}:{port}"
    if kind == "unix":
        path = options.get("address") or (positional[0] if positional else "")
        return f"unix:path={path.replace(':', chr(92) + ':')}:timeout={int(timeout)}", "localhost"
    raise PublishError(f"cannot reach an operator listener of kind {kind!r} ({listen!r})")


def main(argv: Sequence[str] | None = None, prog: str = "wsgw-publish") -> int:
    """``wsgw-publish`` (and ``wsgw publish``, ``prog`` naming it in messages): exit 0 published, 1 refused or
    unreachable, 2 bad command line, configuration or event."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish one event (a JSON object) on a gateway bus topic: through Redis when the config "
                    "names one, else through the operator listener's POST /publish.",
    )
    parser.add_argument("topic", help="tree, meta, tasks, idm, activity or chat")
    parser.add_argument("file", help="the event as JSON, or - for standard input")
    parser.add_argument("-c", "--config", help="the daemon's INI file (default: built-in defaults)")
    parser.add_argument("-r", "--redis", help="Redis client endpoint, overriding the config's")
    parser.add_argument("--admin-listen", help="the daemon's operator listener endpoint, overriding the config's "
                                               "[admin] listen (as twistd wsgw --admin-listen)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.redis, admin_listen=args.admin_listen)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            payload = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                payload = f.read()
    except OSError as e:
        print(f"{prog}: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        check_event(args.topic, payload, config)
    except PublishError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2

    return run_once(prog, lambda reactor: publish(reactor, config, args.topic, payload), PublishError)


def run_once(name: str, request: Callable[[Any], Awaitable[str]], error: type[Exception]) -> int:
    """Run ``request(reactor)`` on a reactor of its own and print its answer: exit status 0; ``error`` (its
    message printed after ``name:`` on stderr) gives 1, as does a reactor that ends without an answer."""
    outcome: list[int] = []

    async def run(reactor: Any) -> None:
        try:
            print(await request(reactor))
            outcome.append(0)
        except error as e:
            print(f"{name}: {e}", file=sys.stderr)
            outcome.append(1)

    from twisted.internet import task

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())
