"""Operators revoke, across every instance (PROTOCOL.md §3.1): POST /disconnect and /revoke on real daemons sharing
one Redis, the control messages between them, revocations kept in Redis across restarts, and the answers."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest_twisted
import treq
from twisted.internet import reactor

from tests.support.daemon import SECRET, SHARED, Daemon, Publisher, StartGateway, scrape, value
from tests.support.waiting import eventually, wait_until
from tests.support.wsclient import Client, connect
from wsgw.control import sign
from wsgw.revocations import Revocation

ADMIN = "tcp:0:interface=127.0.0.1"
OPERATOR_TOKEN = "operator-token-of-the-tests-0123456789"


def tok(login: str, *, iat: float | None = None, jti: str | None = None, sub: str | None = None,
        ttl: float = 3600) -> str:
    """A token of ``login`` issued at ``iat`` (default now) with that ``jti`` (default: a fresh one)."""
    issued = time.time() if iat is None else iat
    claims = {"name": login, "sub": sub or f"uuid-{login}", "iat": issued, "exp": int(issued + ttl),
              "jti": jti or uuid.uuid4().hex, "workspaces": []}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def instance(gateway: StartGateway, tmp_path: Path, redis: str | None = SHARED, prefix: str | None = None,
                   token: bool = True, **overrides: str) -> Daemon:
    """A daemon with an operator listener and (``token``) the operator token; ``prefix`` joins a deployment."""
    settings = dict(overrides)
    if token:
        secret = tmp_path / "operator.token"
        secret.write_text(OPERATOR_TOKEN + "\n")
        settings["admin.publish_token_file"] = str(secret)
    return await gateway(prefix=prefix, redis=redis, admin=ADMIN, overrides=settings)


async def post(daemon: Daemon, path: str, body: Any, auth: str | None = OPERATOR_TOKEN,
               method: str = "POST") -> tuple[int, Any]:
    headers = {"Authorization": [f"Bearer {auth}"]} if auth is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await treq.request(method, f"http://127.0.0.1:{daemon.admin_port}{path}", data=data,
                                  headers=headers, timeout=5)
    text = await response.content()
    return response.code, json.loads(text) if text.startswith(b"{") else text


async def subscribed(daemon: Daemon, token: str, path: str = "/ws") -> Client:
    client = await connect(daemon.port, path)
    answer = await client.subscribe(token)
    assert answer["@type"] == "subscribed", answer
    return client


async def refused(daemon: Daemon, token: str) -> tuple[Any, tuple[int | None, str | None]]:
    """The answer and close of a subscribe with ``token`` on a fresh socket."""
    client = await connect(daemon.port)
    answer = await client.subscribe(token)
    return answer, await client.wait_closed()


async def revoked(client: Client, reason: str) -> None:
    """``client`` gets the error frame, then close 4003 with the reason."""
    assert await client.next() == {"@type": "error", "error": f"access revoked: {reason}"}
    assert await client.wait_closed() == (4003, f"access revoked: {reason}")


async def pair(gateway: StartGateway, tmp_path: Path, **overrides: str) -> tuple[Daemon, Daemon]:
    a = await instance(gateway, tmp_path, **overrides)
    return a, await instance(gateway, tmp_path, prefix=a.prefix, **overrides)


@pytest_twisted.ensureDeferred
async def test_disconnect_closes_the_users_sockets_on_every_instance_and_a_reconnect_is_admitted(
        gateway: StartGateway, tmp_path: Path) -> None:
    """/disconnect on instance A closes alice's sockets on A and B (both endpoints) with an error frame then 4003,
    leaves bob's alone, stores nothing (the same token subscribes again), and is counted."""
    a, b = await pair(gateway, tmp_path)
    alice_token = tok("alice")
    alice = [await subscribed(a, alice_token), await subscribed(b, alice_token), await subscribed(b, alice_token,
                                                                                                   "/chat")]
    bob = await subscribed(a, tok("bob"))
    assert await post(a, "/disconnect", {"login": "alice", "reason": "account under review"}) == (
        202, {"accepted": True})
    for client in alice:
        await revoked(client, "account under review")
    assert (await bob.subscribe(tok("bob")))["@type"] == "subscribed"  # bob's socket is open and served
    await subscribed(b, alice_token)  # /disconnect stores nothing: the same token is admitted again
    for daemon in (a, b):
        samples = await scrape(daemon)
        assert value(samples, "wsgw_control_messages_total", op="disconnect", outcome="applied") == 1
        assert value(samples, "wsgw_revocations") == 0
    assert value(await scrape(a), "wsgw_operator_requests_total", path="/disconnect", status="202") == 1
    assert value(await scrape(b), "wsgw_sessions_revoked_total", why="disconnect") == 2


@pytest_twisted.ensureDeferred
async def test_revoke_by_login_closes_tokens_issued_before_everywhere_and_refuses_them_at_subscribe(
        gateway: StartGateway, tmp_path: Path) -> None:
    """/revoke by login with before, on B: alice's sockets holding a token issued earlier close 4003 on A and B,
    that token is refused 4001 'token revoked' on both, a token issued after before is accepted."""
    a, b = await pair(gateway, tmp_path)
    now = time.time()
    old, recent = tok("alice", iat=now - 100), tok("alice", iat=now - 10)
    on_a, on_b, kept = await subscribed(a, old), await subscribed(b, old, "/chat"), await subscribed(b, recent)
    assert await post(b, "/revoke", {"login": "alice", "before": now - 50}) == (202, {"accepted": True})
    await revoked(on_a, "token revoked")
    await revoked(on_b, "token revoked")
    for daemon in (a, b):
        answer, close = await refused(daemon, old)
        assert answer == {"@type": "error", "error": "subscribe: token revoked"} and close[0] == 4001
        await subscribed(daemon, recent)  # issued after before
    assert (await kept.subscribe(recent))["@type"] == "subscribed"
    samples = await scrape(a)
    assert value(samples, "wsgw_revocations") == 1
    assert value(samples, "wsgw_sessions_revoked_total", why="revoke") == 1


@pytest_twisted.ensureDeferred
async def test_a_token_whose_iat_is_nan_escapes_neither_a_revoke_nor_the_lifetime_bound(
        gateway: StartGateway, tmp_path: Path) -> None:
    """An ``iat`` of NaN (json.loads reads it; not a NumericDate, RFC 7519 §2) compares false with every time: a
    token holding one was subscribed after a /revoke of its login (``iat < before``: false) and however long it
    lived (``exp - iat > max_token_lifetime``: false). It is refused 4001 at subscribe, as a NaN exp or nbf is."""
    a = await instance(gateway, tmp_path)
    assert await post(a, "/revoke", {"login": "alice", "before": time.time() + 5}) == (202, {"accepted": True})
    for lifetime in (3600, 10 * 86400):
        claims = {"name": "alice", "sub": "uuid-alice", "iat": float("nan"), "exp": int(time.time()) + lifetime,
                  "workspaces": []}
        answer, close = await refused(a, jwt.encode(claims, SECRET, algorithm="HS256"))
        assert answer == {"@type": "error", "error": "subscribe: token iat must be a number"}
        assert close == (4001, "subscribe: token iat must be a number")


@pytest_twisted.ensureDeferred
async def test_revoke_by_sub_and_by_jti(gateway: StartGateway, tmp_path: Path) -> None:
    """A sub revocation (before absent: now) closes every token of that user id; a jti one only that token."""
    a, b = await pair(gateway, tmp_path)
    carol = tok("carol", sub="u-carol", iat=time.time() - 5)
    by_sub = [await subscribed(a, carol), await subscribed(b, carol)]
    first, second = tok("dave", jti="jti-1"), tok("dave", jti="jti-2")
    dave_first, dave_second = await subscribed(b, first), await subscribed(a, second)
    assert (await post(a, "/revoke", {"sub": "u-carol"}))[0] == 202
    assert (await post(a, "/revoke", {"jti": "jti-1"}))[0] == 202
    for client in (*by_sub, dave_first):
        await revoked(client, "token revoked")
    assert (await refused(b, first))[1][0] == 4001
    assert (await refused(a, carol))[1][0] == 4001
    assert (await dave_second.subscribe(second))["@type"] == "subscribed"
    await subscribed(b, tok("carol", sub="u-carol", iat=time.time() + 1))


@pytest_twisted.ensureDeferred
async def test_revocations_outlive_the_instances(gateway: StartGateway, tmp_path: Path) -> None:
    """A revocation is in Redis: an instance started afterwards on the same prefix refuses the old token."""
    a = await instance(gateway, tmp_path)
    old = tok("alice", iat=time.time() - 60)
    assert (await post(a, "/revoke", {"login": "alice"}))[0] == 202
    await a.stop()
    c = await instance(gateway, tmp_path, prefix=a.prefix)
    answer, close = await refused(c, old)
    assert answer["error"] == "subscribe: token revoked" and close[0] == 4001
    await subscribed(c, tok("alice", iat=time.time() + 1))
    assert value(await scrape(c), "wsgw_revocations") == 1


@pytest_twisted.ensureDeferred
async def test_revocations_expire_after_max_token_lifetime(gateway: StartGateway, tmp_path: Path) -> None:
    """A revocation is gone max_token_lifetime (plus the leeway on exp, 0 here) after its before, from Redis and
    from the instance's copy."""
    a = await instance(gateway, tmp_path, **{"auth.max_token_lifetime": "1", "auth.leeway": "0"})
    assert (await post(a, "/revoke", {"login": "alice"}))[0] == 202
    assert value(await scrape(a), "wsgw_revocations") == 1

    async def forgotten() -> bool:
        keys = await a.service.redis_commands.execute_command("KEYS", f"{a.prefix}:revoked:*")
        return not keys and value(await scrape(a), "wsgw_revocations") == 0

    await eventually(forgotten, "the revocation to expire in Redis and in memory", timeout=5)


@pytest_twisted.ensureDeferred
async def test_a_revoked_token_stays_refused_while_the_leeway_still_accepts_it(gateway: StartGateway,
                                                                           tmp_path: Path) -> None:
    """max_token_lifetime 2 s, leeway 3 s: a token issued at T-1 expiring at T+1 is revoked at T. The verifier
    accepts it until T+4 (exp + leeway), so the revocation must outlive T+2 (before + max_token_lifetime): at T+2.5
    the token is still refused (PROTOCOL.md §3.1: refused "until the tokens would have expired anyway")."""
    a = await instance(gateway, tmp_path, **{"auth.max_token_lifetime": "2", "auth.leeway": "3"})
    now = time.time()
    alice_jwt = tok("alice", iat=now - 1, ttl=2)
    alice = await subscribed(a, alice_jwt)
    assert (await post(a, "/revoke", {"login": "alice", "before": now}))[0] == 202
    assert (await alice.wait_closed())[0] == 4003
    await wait_until(lambda: time.time() > now + 2.5, "T+2.5: the revocation's max_token_lifetime passed")
    again = await connect(a.port)
    assert await again.subscribe(alice_jwt) == {"@type": "error", "error": "subscribe: token revoked"}


@pytest_twisted.ensureDeferred
async def test_a_forged_control_message_on_redis_does_nothing_and_is_counted(gateway: StartGateway,
                                                                            tmp_path: Path) -> None:
    """Anyone may PUBLISH on the control channel; without the operator token's mac nothing happens."""
    a = await instance(gateway, tmp_path)
    alice = await subscribed(a, tok("alice"))
    publisher = Publisher(a.prefix)
    try:
        forged = json.loads(sign(b"guessed-token", {"op": "disconnect", "login": "alice", "at": time.time(),
                                                    "id": "f1"}))
        await publisher.publish("control", forged)
        await publisher.publish("control", b"{not json")

        async def counted() -> bool:
            samples = await scrape(a)
            return value(samples, "wsgw_control_messages_total", op="disconnect", outcome="forged") == 1 and \
                value(samples, "wsgw_bus_events_malformed_total", topic="control") == 1

        await eventually(counted, "the forged message to be counted")
    finally:
        await publisher.close()
    assert not alice.closed.called
    assert (await alice.subscribe(tok("alice")))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_operator_pages_answer_400_401_403_405_413(gateway: StartGateway, tmp_path: Path) -> None:
    """Bad bodies get 400 with the reason, a missing or wrong token 401, another method 405, an oversized body 413,
    no operator token configured 403; nothing is revoked, and each answer is counted by path and status."""
    a = await instance(gateway, tmp_path)
    assert await post(a, "/revoke", b"{nope") == (400, {"error": "not JSON: Expecting property name enclosed in "
                                                        "double quotes: line 1 column 2 (char 1)"})
    assert await post(a, "/revoke", {"before": 1}) == (400, {"error": "revoke needs login or sub or jti"})
    assert (await post(a, "/revoke", {"login": "a", "before": True}))[0] == 400
    assert (await post(a, "/disconnect", {"login": "a", "extra": 1}))[1]["error"].startswith("unknown field 'extra'")
    assert (await post(a, "/disconnect", {"login": "a"}, auth=None))[0] == 401
    assert (await post(a, "/revoke", {"login": "a"}, auth="wrong"))[0] == 401
    assert (await post(a, "/revoke", {}, method="GET"))[0] == 405
    assert (await post(a, "/revoke", b"[" + b" " * (1 << 20) + b"]"))[0] == 413
    samples = await scrape(a)
    assert value(samples, "wsgw_operator_requests_total", path="/revoke", status="400") == 3
    assert value(samples, "wsgw_revocations") == 0
    off = await instance(gateway, tmp_path, token=False)
    code, answer = await post(off, "/revoke", {"login": "a"})
    assert code == 403 and "publish_token_file" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_embedded_mode_disconnects_and_revokes_on_its_one_instance(gateway: StartGateway,
                                                                         tmp_path: Path) -> None:
    """Without Redis, /disconnect and /revoke work on the one instance (revocations in memory)."""
    a = await instance(gateway, tmp_path, redis=None)
    old = tok("alice", iat=time.time() - 60)
    alice, bob = await subscribed(a, old), await subscribed(a, tok("bob"))
    assert (await post(a, "/disconnect", {"login": "bob"}))[0] == 202
    await revoked(bob, "disconnected by an operator")
    assert (await post(a, "/revoke", {"login": "alice"}))[0] == 202
    await revoked(alice, "token revoked")
    assert (await refused(a, old))[0]["error"] == "subscribe: token revoked"
    await wait_until(lambda: len(a.service.gateway.revocations) == 1, "the revocation in memory")
    assert reactor.running


@pytest_twisted.ensureDeferred
async def test_an_instance_that_was_off_the_bus_catches_up_on_the_revocations_stored_meanwhile(
        gateway: StartGateway, tmp_path: Path) -> None:
    """A revocation stored while an instance's bus subscriber was down (its control message lost) is loaded again
    once that subscriber reconnected: the live socket holding the token is closed 4003, the token refused."""
    b = await instance(gateway, tmp_path)
    old = tok("alice", iat=time.time() - 60)
    alice = await subscribed(b, old)
    await b.service.revocation_store.save(Revocation("login", "alice", time.time()), time.time() + 60)
    subscriber = b.service.bus.links[0]
    subscriber._ready.transport.loseConnection()  # the subscriber drops; the client reconnects by itself
    await wait_until(lambda: subscriber.reconnects == 1, "the bus subscriber to reconnect")
    await revoked(alice, "token revoked")
    assert (await refused(b, old))[0]["error"] == "subscribe: token revoked"
