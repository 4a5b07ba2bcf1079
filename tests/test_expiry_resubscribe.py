"""Token expiry on the wire after a re-subscribe (PROTOCOL.md §2: a subscribe replaces the session's access; the
socket is closed 4001 ``token expired`` when its token's ``exp`` passes; the auth timeout, 30 s by default). The
session's one timer (``Gateway._set_timer``: moved on by ``DelayedCall.reset`` when the new deadline is later,
replaced when it is sooner; bench/RESULTS.md "Connect path", part 5) on the real reactor: each close comes at the
``exp`` of the access the session holds then, not at an earlier token's and not at the auth timeout."""

from __future__ import annotations

import time

import pytest_twisted

from tests.support.daemon import StartGateway, token
from tests.support.wsclient import Client, connect

LEEWAY0 = {"auth.leeway": "0"}
SLACK = 1.0  # s: a loaded 2-core VM's reactor turn and close handshake


async def _closed_at(client: Client, timeout: float = 8) -> tuple[tuple[int | None, str | None], float]:
    closed = await client.wait_closed(timeout=timeout)
    return closed, time.time()


@pytest_twisted.ensureDeferred
async def test_a_staler_token_closes_at_its_own_exp_not_the_first_ones(gateway: StartGateway) -> None:
    """Subscribed until ``exp + 4``, then re-subscribed with a token expiring at ``exp``: closed at ``exp`` (the
    access it holds), long before the first token's expiry."""
    daemon = await gateway(redis=None, overrides=LEEWAY0)
    exp = int(time.time()) + 2
    client = await connect(daemon.port)
    assert (await client.subscribe(token("alice", exp=exp + 4)))["exp"] == exp + 4
    assert (await client.subscribe(token("alice", exp=exp)))["exp"] == exp
    closed, at = await _closed_at(client)
    assert closed == (4001, "token expired")
    assert exp <= at < exp + SLACK


@pytest_twisted.ensureDeferred
async def test_unsubscribe_then_a_later_token_closes_at_the_later_exp(gateway: StartGateway) -> None:
    """Subscribed until ``exp``, unsubscribed (no timer: the socket stays open), then subscribed until ``exp + 2``:
    open past ``exp``, closed at ``exp + 2``."""
    daemon = await gateway(redis=None, overrides=LEEWAY0)
    exp = int(time.time()) + 2
    client = await connect(daemon.port)
    await client.subscribe(token("alice", exp=exp))
    client.send_json({"@type": "unsubscribe"})
    assert (await client.subscribe(token("alice", exp=exp + 2)))["exp"] == exp + 2
    closed, at = await _closed_at(client)
    assert closed == (4001, "token expired")
    assert exp + 2 <= at < exp + 2 + SLACK


@pytest_twisted.ensureDeferred
async def test_a_token_expiring_before_the_auth_timeout_closes_at_its_exp(gateway: StartGateway) -> None:
    """The auth timer (30 s from open) is replaced by the sooner expiry: closed ``token expired`` at ``exp``; and
    with a token outliving the auth timeout the socket is not closed at the auth timeout (then at ``exp``)."""
    daemon = await gateway(redis=None, overrides={**LEEWAY0, "websocket.auth_timeout": "2"})
    exp = int(time.time()) + 2
    early, late = await connect(daemon.port), await connect(daemon.port)
    await early.subscribe(token("alice", exp=exp))
    await late.subscribe(token("bob", exp=exp + 3))
    closed, at = await _closed_at(early)
    assert closed == (4001, "token expired") and exp <= at < exp + SLACK
    closed, at = await _closed_at(late)
    assert closed == (4001, "token expired") and exp + 3 <= at < exp + 3 + SLACK


@pytest_twisted.ensureDeferred
async def test_a_fractional_exp_is_not_cut_short(gateway: StartGateway) -> None:
    """``exp`` is a NumericDate, which may be non-integer (RFC 7519 §2): a token expiring at ``s + 0.9`` is one
    the verifier accepts until then (``wsgw.auth.tokens``: expired when now >= exp + leeway), so the socket may not
    be closed ``token expired`` at ``s`` (the whole seconds alone), 0.9 s before its exp passes."""
    daemon = await gateway(redis=None, overrides=LEEWAY0)
    exp = int(time.time()) + 2.9
    client = await connect(daemon.port)
    assert (await client.subscribe(token("alice", exp=exp)))["@type"] == "subscribed"
    closed, at = await _closed_at(client)
    assert closed == (4001, "token expired")
    assert exp <= at < exp + SLACK
