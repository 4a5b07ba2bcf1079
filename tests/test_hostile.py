"""Hostile input against the real daemon (in-process, real Redis, real Autobahn clients on loopback).

Each attack gets a clear error frame and/or close code, and a well-behaved client on the same daemon (the
"watcher", subscribed before the attack) still receives its events afterwards:

- tokens: ``alg: none``, algorithms not configured, algorithm confusion (HS256 signed with the RS256 public
  key), expired, not yet valid, wrong issuer or audience, garbage, no expiry, a 1 MB token, a 12 KiB one;
- frames: not JSON, not an object, binary, invalid UTF-8, oversized, fragments adding up past the limit,
  deeply nested, huge numbers, wrong field types, unknown ``@type``, lone surrogates;
- bus events on every topic: not JSON, not an object, wrong types, missing fields, 5 MB payloads;
- a crashing topic handler (forced), and token expiry while connected.

The 4029 flood, the per-IP cap and the Origin allow-list are tested in ``test_inbound.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver

from tests.support.daemon import SECRET, Daemon, StartGateway, channels, new_prefix, token, workspace
from tests.support.redis_server import shared_endpoint
from tests.support.wsclient import Client, connect
from wsgw.config import config_from_string
from wsgw.events.tasks import TaskHandler
from wsgw.service import GatewayService

pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key is .* below the minimum recommended length")

HOME = workspace("w-home", "home", "ds/home")
ISSUER = "https://id.example.org"
Frame = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(login: str = "mallory", ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"name": login, "sub": f"uuid-{login}", "workspaces": [HOME], "exp": int(time.time() + ttl), **extra}


def hs256_by_hand(body: dict[str, Any], key: bytes, header: dict[str, Any] | None = None) -> str:
    """A JWS signed with HMAC-SHA256 and any key (pyjwt refuses a PEM key as an HMAC secret)."""
    signing_input = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(
        json.dumps(body).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def rsa_key_pair() -> tuple[bytes, bytes]:
    """(private key PEM, public key PEM) of a fresh RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


async def start_rs256_daemon(prefix: str, public_key_file: Path) -> Daemon:
    """A daemon that accepts RS256 tokens only: no HMAC secret at all (start_daemon always sets one)."""
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    text = (
        f"[server]\nlisten = tcp:0:interface=127.0.0.1\nredis = {shared_endpoint()}\nshutdown_timeout = 5\n"
        f"[topics]\n{topics}\n[delivery]\nbatch_window = 0\n"
        f"[auth]\nalgorithms = RS256\npublic_key_file = {public_key_file}\n"
    )
    config = config_from_string(text, "<rs256>", overrides={"admin.listen": "", "chat.key_prefix": f"{prefix}:chat:"},
                                environ={})
    service = GatewayService(config, reactor)
    service.startService()
    await service.bus.whenConnected().addTimeout(10, reactor)
    return Daemon(service, prefix)


async def watcher(daemon: Daemon, jwt_: str | None = None) -> Client:
    """A well-behaved /ws client subscribed to HOME as "watcher"."""
    client = await connect(daemon.port)
    assert (await client.subscribe(jwt_ or token("watcher", [HOME])))["@type"] == "subscribed"
    return client


async def still_served(daemon: Daemon, client: Client) -> None:
    """A node event published now reaches ``client`` (whatever happened before on the daemon)."""
    name = f"{uuid.uuid4().hex[:8]}.txt"
    await daemon.publish("tree", {"Target": {"Uuid": name, "Path": f"ds/home/{name}"}})
    for _ in range(20):  # events published earlier in the test may come first
        if (await client.next()).get("Target", {}).get("Path") == f"home/{name}":
            return
    raise AssertionError(f"home/{name} did not arrive")


async def answer_and_close(client: Client) -> tuple[list[Frame], tuple[int | None, str | None]]:
    """Every frame the server sent before closing, and the close code and reason."""
    closed = await client.wait_closed()
    frames: list[Frame] = []
    while client.frames.pending:
        frames.append(client.frames.pending.pop(0))
    return frames, closed


Hostile = Callable[..., AbstractAsyncContextManager[tuple[Daemon, Client]]]
"""The ``hostile`` fixture: ``async with hostile(extra="", watcher_token=None, **start_daemon_options) as
(daemon, watcher)``."""


@pytest.fixture
def hostile(gateway: StartGateway) -> Hostile:
    """A daemon on the real Redis (started and stopped by the ``gateway`` fixture) and a watcher; at the end of
    the ``async with`` block the watcher must still be served."""

    @asynccontextmanager
    async def attack(extra: str = "", watcher_token: str | None = None,
                     **kwargs: Any) -> AsyncIterator[tuple[Daemon, Client]]:
        daemon = await gateway(extra=extra, **kwargs)
        calm = await watcher(daemon, watcher_token)
        yield daemon, calm
        await still_served(daemon, calm)

    return attack


class _Recording:
    """The gateway as the protocols see it, recording every frame handed to ``receive`` (a wrapper: a compiled
    ``Gateway``, README "Compiled modules", takes no instance attribute such as a patched method)."""

    def __init__(self, gateway: Any, calls: list[Frame]) -> None:
        self._gateway = gateway
        self._calls = calls

    def receive(self, session: Any, frame: Frame, size: int = 0) -> Any:
        self._calls.append(frame)
        return self._gateway.receive(session, frame, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def receive_calls(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> list[Frame]:
    """Records every frame the protocols hand to Gateway.receive."""
    calls: list[Frame] = []
    for factory in daemon.service.factories:
        monkeypatch.setattr(factory, "gateway", _Recording(factory.gateway, calls))
    return calls


# --------------------------------------------------------------------------- tokens

PRIVATE_PEM, PUBLIC_PEM = rsa_key_pair()


def _alg_none() -> str:
    return b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."


BAD_TOKENS: dict[str, tuple[Callable[[], Any], str]] = {
    "alg none": (_alg_none, "subscribe: token algorithm none is not allowed"),
    "alg None, signed": (lambda: hs256_by_hand(claims(), SECRET.encode(), {"alg": "None"}),
                         "subscribe: token algorithm None is not allowed"),
    "HS512 not configured": (lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
                             "subscribe: token algorithm HS512 is not allowed"),
    "RS256 not configured": (lambda: jwt.encode(claims(), PRIVATE_PEM, algorithm="RS256"),
                             "subscribe: token algorithm RS256 is not allowed"),
    "expired": (lambda: jwt.encode(claims(ttl=-3600), SECRET, algorithm="HS256"), "subscribe: token expired"),
    "not yet valid": (lambda: jwt.encode(claims(nbf=int(time.time() + 3600)), SECRET, algorithm="HS256"),
                      "subscribe: token not yet valid"),
    "no expiry": (lambda: jwt.encode({"name": "mallory"}, SECRET, algorithm="HS256"),
                  "subscribe: token has no expiry (exp)"),
    "wrong secret": (lambda: jwt.encode(claims(), "another-secret-of-at-least-32-bytes!", algorithm="HS256"),
                     "subscribe: invalid token signature"),
    "garbage": (lambda: "garbage", "subscribe: malformed token"),
    "three dots": (lambda: "a.b.c", "subscribe: malformed token"),
    "empty objects": (lambda: "e30.e30.e30", "subscribe: malformed token: no algorithm"),
    "not ascii": (lambda: "é" * 10, "subscribe: malformed token"),
    "empty": (lambda: "", "subscribe: missing token"),
    "a number": (lambda: 12345, "subscribe: missing token"),
    "a list": (lambda: [token("watcher", [HOME])], "subscribe: missing token"),
    "an object": (lambda: {"jwt": token("watcher", [HOME])}, "subscribe: missing token"),
    "null": (lambda: None, "subscribe: missing token"),
}


@pytest.mark.parametrize("path", ["/ws", "/chat"])
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
@pytest_twisted.ensureDeferred
async def test_a_bad_token_gets_an_error_frame_and_4001(case: str, path: str, hostile: Hostile) -> None:
    """Each kind of bad token is answered with an error frame naming the reason, then close 4001; the watcher on
    the same daemon still gets its events."""
    make, reason = BAD_TOKENS[case]
    async with hostile() as (daemon, _):
        client = await connect(daemon.port, path)
        client.send_json({"@type": "subscribe", "jwt": make()})
        frames, closed = await answer_and_close(client)
        assert frames == [{"@type": "error", "error": reason}]
        assert closed == (4001, reason)


@pytest.mark.parametrize("case, body, reason", [
    ("wrong issuer", claims(iss="https://evil.example.org", aud="wsgw"), "subscribe: token issuer is not accepted"),
    ("no issuer", claims(aud="wsgw"), "subscribe: token issuer is not accepted"),
    ("wrong audience", claims(iss=ISSUER, aud="other"), "subscribe: token audience is not accepted"),
    ("audience list without us", claims(iss=ISSUER, aud=["a", "b"]), "subscribe: token audience is not accepted"),
    ("no audience", claims(iss=ISSUER), "subscribe: token audience is not accepted"),
])
@pytest_twisted.ensureDeferred
async def test_wrong_issuer_or_audience_is_refused(case: str, body: dict[str, Any], reason: str,
                                                   hostile: Hostile) -> None:
    """With an issuer and an audience configured, a token naming another (or none) is refused with 4001, while
    the watcher, whose token names both (the audience among others), is accepted and served."""
    right = jwt.encode(claims("watcher", iss=ISSUER, aud=["x", "wsgw"]), SECRET, algorithm="HS256")
    async with hostile(f"[auth]\nissuer = {ISSUER}\naudience = wsgw\n", right) as (daemon, _):
        client = await connect(daemon.port)
        client.send_json({"@type": "subscribe", "jwt": jwt.encode(body, SECRET, algorithm="HS256")})
        assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (4001, reason))


@pytest_twisted.ensureDeferred
async def test_algorithm_confusion_on_an_rs256_daemon(tmp_path: Path) -> None:
    """On a daemon configured for RS256 only, an HS256 token signed with the public key as HMAC secret is refused
    (HS256 is not allowed), while a real RS256 token is accepted and served."""
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(PUBLIC_PEM)
    daemon = await start_rs256_daemon(new_prefix(), key_file)
    try:
        good = await connect(daemon.port)
        assert (await good.subscribe(jwt.encode(claims("alice"), PRIVATE_PEM, algorithm="RS256")))["user"] == "alice"
        for secret in (PUBLIC_PEM, PUBLIC_PEM.strip()):
            client = await connect(daemon.port)
            client.send_json({"@type": "subscribe", "jwt": hs256_by_hand(claims(), secret)})
            reason = "subscribe: token algorithm HS256 is not allowed"
            assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (4001, reason))
        await still_served(daemon, good)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_algorithm_confusion_on_a_daemon_with_both_families(tmp_path: Path, hostile: Hostile) -> None:
    """With HS256 and RS256 both configured, an HS256 token signed with the public key is checked against the
    HMAC secret only, so its signature is refused; RS256 and HS256 tokens made right are both accepted."""
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(PUBLIC_PEM)
    async with hostile(f"[auth]\nalgorithms = HS256 RS256\npublic_key_file = {key_file}\n") as (daemon, _):
        for secret in (PUBLIC_PEM, PUBLIC_PEM.strip()):
            client = await connect(daemon.port)
            client.send_json({"@type": "subscribe", "jwt": hs256_by_hand(claims(), secret)})
            reason = "subscribe: invalid token signature"
            assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (4001, reason))
        rs = await connect(daemon.port)
        assert (await rs.subscribe(jwt.encode(claims("alice"), PRIVATE_PEM, algorithm="RS256")))["user"] == "alice"


@pytest.mark.parametrize("path, limit", [("/ws", 2048), ("/chat", 16384)])
@pytest_twisted.ensureDeferred
async def test_a_one_megabyte_token_is_refused_by_the_frame_limit(path: str, limit: int, hostile: Hostile) -> None:
    """A subscribe carrying a 1 MB token is over both endpoints' frame limits: error frame and 1009 before any
    verification (the right answer: the frame is refused for its size, the token is never looked at)."""
    async with hostile() as (daemon, _):
        client = await connect(daemon.port, path)
        client.send_json({"@type": "subscribe", "jwt": "A" * 1_000_000})
        reason = f"frame too big: the limit is {limit} bytes"
        assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (1009, reason))
        assert not daemon.service.gateway.refusals  # never reached the token check


@pytest_twisted.ensureDeferred
async def test_a_token_over_the_verifier_limit_within_the_chat_frame_limit_is_refused_4001(hostile: Hostile) -> None:
    """On /chat (16 KiB frames) a 12 KiB token fits the frame but not the verifier's 8 KiB token limit: 4001."""
    async with hostile() as (daemon, _):
        client = await connect(daemon.port, "/chat")
        client.send_json({"@type": "subscribe", "jwt": "A" * 12_000})
        reason = "subscribe: token too large (limit 8192 bytes)"
        assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (4001, reason))


@pytest_twisted.ensureDeferred
async def test_a_signed_token_with_an_absurd_expiry_is_refused_4001(hostile: Hostile) -> None:
    """A correctly signed token whose exp is an integer past float range is refused with an error frame and 4001."""
    async with hostile() as (daemon, _):
        client = await connect(daemon.port)
        client.send_json({"@type": "subscribe", "jwt": jwt.encode(claims(exp=10**400), SECRET, algorithm="HS256")})
        frames, closed = await answer_and_close(client)
        assert closed[0] == 4001 and frames and frames[0]["@type"] == "error"


# --------------------------------------------------------------------------- frames

NESTED_OK = ("[" * 500 + "]" * 500).encode()  # valid, 1000 bytes
BAD_FRAMES: dict[str, tuple[str, bytes, bool, int, str | None]] = {
    # case: (path, payload, binary, close code, error frame (None: Autobahn closes without one))
    "not JSON": ("/ws", b"{nope", False, 1003, "the frame is not valid JSON"),
    "not JSON on chat": ("/chat", b"subscribe me", False, 1003, "the frame is not valid JSON"),
    "an array": ("/ws", b"[1, 2]", False, 1003, "the frame is not a JSON object"),
    "a string": ("/chat", b'"subscribe"', False, 1003, "the frame is not a JSON object"),
    "a number": ("/ws", b"42", False, 1003, "the frame is not a JSON object"),
    "null": ("/chat", b"null", False, 1003, "the frame is not a JSON object"),
    "empty": ("/ws", b"", False, 1003, "the frame is not valid JSON"),
    "binary": ("/ws", b'{"@type":"subscribe"}', True, 1003, "binary frames are not accepted: send JSON text frames"),
    "binary on chat": ("/chat", b"\x00\x01", True, 1003, "binary frames are not accepted: send JSON text frames"),
    "invalid UTF-8": ("/ws", b'{"@type":"\xff\xfe"}', False, 1007, None),
    "truncated UTF-8": ("/chat", b'{"@type":"\xc3', False, 1007, None),
    "oversized on ws": ("/ws", b'{"pad":"' + b"x" * 3000 + b'"}', False, 1009, "frame too big: the limit is 2048 bytes"),
    "oversized on chat": ("/chat", b'{"pad":"' + b"x" * 17000 + b'"}', False, 1009,
                          "frame too big: the limit is 16384 bytes"),
    "deeply nested on ws": ("/ws", b"[" * 2040, False, 1003, "the frame is not valid JSON"),
    "deeply nested on chat": ("/chat", b"[" * 16000, False, 1003, "the frame is not valid JSON"),
    "deeply nested object": ("/chat", b'{"a":' * 2500 + b"1" + b"}" * 2500, False, 1003, "the frame is not valid JSON"),
    # past frames.MAX_DEPTH (512), under the depth json.loads refuses (~975 interpreted, more compiled: they differed)
    "nested 513 deep on chat": ("/chat", b'{"@type":"JOIN","x":' + b"[" * 512 + b"]" * 512 + b"}", False, 1003,
                                "the frame is not valid JSON"),
    "nested 973 deep on ws": ("/ws", b'{"x":' + b"[" * 972 + b"]" * 972 + b"}", False, 1003,
                              "the frame is not valid JSON"),
    "huge integer": ("/chat", b'{"@type":"subscribe","jwt":' + b"9" * 10_000 + b"}", False, 1003,
                     "the frame is not valid JSON"),
    "subscribe, nested token": ("/ws", b'{"@type":"subscribe","jwt":' + NESTED_OK + b"}", False, 4001,
                                "subscribe: missing token"),
    "subscribe, huge float token": ("/ws", b'{"@type":"subscribe","jwt":1e999}', False, 4001,
                                    "subscribe: missing token"),
    "subscribe, NaN token": ("/chat", b'{"@type":"subscribe","jwt":NaN}', False, 4001, "subscribe: missing token"),
    "subscribe, token as a number": ("/ws", b'{"@type":"subscribe","jwt":12345}', False, 4001,
                                     "subscribe: missing token"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
@pytest_twisted.ensureDeferred
async def test_a_bad_frame_gets_a_clear_close(case: str, hostile: Hostile) -> None:
    """Each bad frame is answered with an error frame (when the server can still write one) and the documented
    close code; it never reaches the gateway core, except a well-formed subscribe carrying a non-string token."""
    path, payload, binary, code, error = BAD_FRAMES[case]
    async with hostile() as (daemon, _):
        client = await connect(daemon.port, path)
        client.sendMessage(payload, isBinary=binary)
        frames, (closed_code, _) = await answer_and_close(client)
        assert closed_code == code
        assert frames == ([] if error is None else [{"@type": "error", "error": error}])
        assert daemon.service.gateway.subscribes_accepted == 1  # the watcher only


@pytest.mark.parametrize("path, limit", [("/ws", 2048), ("/chat", 16384)])
@pytest_twisted.ensureDeferred
async def test_fragments_adding_up_past_the_limit_are_refused_and_never_handled(
    path: str, limit: int, monkeypatch: pytest.MonkeyPatch, hostile: Hostile
) -> None:
    """A valid subscribe sent in fragments each under the limit but adding up past it gets error + 1009, and
    the assembled message never reaches the gateway (nothing is buffered and handled after the close)."""
    async with hostile() as (daemon, _):
        calls = receive_calls(daemon, monkeypatch)
        client = await connect(daemon.port, path)
        frame = {"@type": "subscribe", "jwt": token("alice", [HOME]), "pad": " " * (limit * 20)}
        client.sendMessage(json.dumps(frame).encode(), fragmentSize=limit // 4)
        reason = f"frame too big: the limit is {limit} bytes"
        assert await answer_and_close(client) == ([{"@type": "error", "error": reason}], (1009, reason))
        assert calls == []
        assert daemon.service.gateway.subscribes_accepted == 1  # the watcher only


@pytest_twisted.ensureDeferred
async def test_fragments_within_the_limit_are_assembled_and_handled(hostile: Hostile) -> None:
    """The control for the test above: a subscribe in small fragments adding up under the limit is accepted."""
    async with hostile() as (daemon, _):
        client = await connect(daemon.port)
        client.sendMessage(json.dumps({"@type": "subscribe", "jwt": token("alice", [HOME])}).encode(),
                           fragmentSize=16)
        assert (await client.next())["user"] == "alice"


@pytest_twisted.ensureDeferred
async def test_unknown_and_mistyped_frames_on_ws_are_ignored_and_the_socket_serves_on(hostile: Hostile) -> None:
    """On /ws an unknown @type, a @type of the wrong type and a frame without @type are ignored, as in Cells: the
    socket stays open, can still subscribe and receives events."""
    async with hostile() as (daemon, _):
        client = await connect(daemon.port)
        for frame in ({"@type": "FOO"}, {"@type": ["subscribe"]}, {"@type": {"a": 1}}, {"@type": None},
                      {"@type": 10**300}, {"jwt": token("x")}, {}, {"@type": "JOIN", "Room": {}}):
            client.send_json(frame)
        assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
        await still_served(daemon, client)


@pytest_twisted.ensureDeferred
async def test_unknown_and_mistyped_chat_frames_get_error_frames_and_the_socket_stays(hostile: Hostile) -> None:
    """On /chat, unknown or mistyped frames (and huge, negative or fractional paging numbers) are each answered
    with an error frame naming the problem (or an empty page), and the socket stays open and usable."""
    async with hostile() as (daemon, _):
        chat = await connect(daemon.port, "/chat")
        chat.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL"}})
        assert (await chat.next())["error"] == "JOIN: not subscribed, send subscribe with a token first"
        await chat.subscribe(token("alice", [HOME]))
        cases: list[tuple[Frame, str]] = [
            ({"@type": "FOO"}, "unknown @type 'FOO'"),
            ({"@type": 5}, "chat frame: missing @type"),
            ({"@type": "JOIN", "Room": "GLOBAL"}, "JOIN: Room must be an object"),
            ({"@type": "JOIN", "Room": {"Type": ["GLOBAL"]}}, "JOIN: unknown Room.Type ['GLOBAL']"),
            ({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": 7}},
             "JOIN: Room.RoomTypeObject must be a string of at most 512 characters"),
            ({"@type": "POST", "Message": "hi"}, "POST: Message must be an object"),
            ({"@type": "POST", "Message": {"Message": 5, "RoomUuid": "r"}}, "POST: Message.Message must be a string"),
            ({"@type": "HISTORY", "Room": {"Type": "GLOBAL"}, "Message": {"Message": '{"Offset":-1}'}},
             "HISTORY: Offset must be a non-negative integer"),
            ({"@type": "HISTORY", "Room": {"Type": "GLOBAL"}, "Message": {"Message": '{"Limit":1.5}'}},
             "HISTORY: Limit must be a non-negative integer"),
            ({"@type": "DELETE_MSG", "Message": {"Uuid": ["x"]}}, "DELETE_MSG: Message.Uuid must be a string of at most 512 characters"),
        ]
        for frame, error in cases:
            chat.send_json(frame)
            assert await chat.next() == {"@type": "error", "error": error}
        room = f"hostile-{uuid.uuid4().hex[:8]}"
        chat.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": room}})
        update = await chat.next()
        assert update["@type"] == "ROOM_UPDATE"
        huge = json.dumps({"Offset": 10**300, "Limit": 10**300})
        chat.send_json({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": room},
                        "Message": {"Message": huge}})
        chat.send_json({"@type": "POST", "Room": {"Type": "NODE", "RoomTypeObject": room},
                        "Message": {"Message": "still here"}})
        while (frame := await chat.next()).get("@type") == "ROOM_UPDATE":
            pass
        assert frame["Message"] == "still here"  # nothing but room updates came back for the huge page
        assert not chat.closed.called


@pytest_twisted.ensureDeferred
async def test_lone_surrogate_escapes_in_frames_get_a_clear_answer(hostile: Hostile) -> None:
    """A lone-surrogate escape (valid JSON, passes UTF-8 validation) as a chat @type or room is answered with a
    valid JSON error frame, and the socket stays open."""
    async with hostile() as (daemon, _):
        chat = await connect(daemon.port, "/chat")
        chat.sendMessage(b'{"@type":"\\ud800"}')
        assert (await chat.next())["error"] == "\ud800: not subscribed, send subscribe with a token first"
        await chat.subscribe(token("alice", [HOME]))
        chat.sendMessage(b'{"@type":"JOIN","Room":{"Type":"\\udfff"}}')
        assert (await chat.next())["error"] == "JOIN: unknown Room.Type '\\udfff'"
        assert not chat.closed.called


# --------------------------------------------------------------------------- bus events

GOOD_EVENTS: dict[str, Callable[[str], Frame]] = {
    "tree": lambda tag: {"Target": {"Uuid": tag, "Path": f"ds/home/{tag}"}},
    "meta": lambda tag: {"Type": "UPDATE_META", "Target": {"Uuid": tag, "Path": f"ds/home/{tag}"}},
    "tasks": lambda tag: {"TaskUpdated": {"TriggerOwner": "watcher", "ID": tag}},
    "idm": lambda tag: {"User": {"Login": "watcher", "Uuid": tag}},
    "activity": lambda tag: {"OwnerType": "USER", "OwnerId": "watcher",
                             "Activity": {"id": tag, "actor": {"id": "bob"}, "object": {"name": "a/b.txt"}}},
    "chat": lambda tag: {"Message": {"Uuid": tag, "RoomUuid": "@ROOM@", "Message": "hi"}},
}
WRONG_TYPES: dict[str, list[Any]] = {
    "tree": [{"Target": {"Path": 5}}, {"Type": 9, "Target": {}}, {"Type": True, "Target": {"Path": "ds/home/x"}},
             {"Target": {"Path": "ds/home/x", "Type": 7}}, {"Target": {"Path": "ds/home/x", "MetaStore": []}},
             {"Target": {"Path": "ds/home/x", "MetaStore": {"a": 1}}}, {"Type": "BOGUS", "Target": {}},
             {"Target": "ds/home/x"}, {"Target": {"Path": "ds/home/x"}, "Silent": "yes"}],
    "tasks": [{"TaskUpdated": "x"}, {"TaskUpdated": {"TriggerOwner": 5}}, {"TaskUpdated": {}, "Job": []},
              {"TaskUpdated": {"TriggerOwner": "watcher", "Status": "Flying"}},
              {"TaskUpdated": {"TriggerOwner": "watcher", "Status": 42}}],
    "idm": [{"Role": []}, {"User": {"Login": 5}}, {"Acl": {"RoleID": {}}}, {"Workspace": {"UUID": 1}},
            {"Type": "EXPLODE", "User": {"Login": "watcher"}}, {"Type": 9, "User": {"Login": "watcher"}}],
    "activity": [{"OwnerType": "USER", "OwnerId": "watcher", "Activity": "x"},
                 {"OwnerType": "GROUP", "OwnerId": "watcher", "Activity": {}},
                 {"OwnerType": 2, "OwnerId": "watcher", "Activity": {}},
                 {"OwnerType": "USER", "OwnerId": 5, "Activity": {}},
                 {"OwnerType": "USER", "OwnerId": "watcher", "Activity": {"object": {"name": 5}}}],
    "chat": [{"Message": {"RoomUuid": 7}}, {"Message": "x"}, {"Room": {"Uuid": ""}}, {"Room": []}],
}
WRONG_TYPES["meta"] = WRONG_TYPES["tree"]
MISSING_FIELDS: dict[str, list[Any]] = {
    "tree": [{"Type": "CREATE"}, {}], "meta": [{"Type": "UPDATE_META"}],
    "tasks": [{"Job": {"ID": "j"}}, {}], "idm": [], "activity": [{"OwnerType": "USER", "OwnerId": "watcher"}],
    "chat": [{}, {"Details": "DELETE"}, {"Message": {"Message": "hi"}}],
}
NOT_EVENTS: list[bytes] = [b"{nope", b"", b"\xff\xfe", b"[1,2]", b'"event"', b"null", b"1e999", b"[" * 100_000]
ENORMOUS = b'{"pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'


async def _watcher_in_room(daemon: Any) -> tuple[Any, str]:
    """A /chat client subscribed and joined to a new room (the chat topic's events land there), and the room's uuid."""
    chat = await connect(daemon.port, "/chat")
    await chat.subscribe(token("watcher", [HOME]))
    room = f"hostile-{uuid.uuid4().hex[:8]}"
    chat.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": room}})
    return chat, (await chat.next())["Room"]["Uuid"]


@pytest_twisted.ensureDeferred
async def test_bad_bus_events_on_every_topic_are_dropped_and_good_ones_still_arrive(
    tracebacks: EventLoggingObserver, hostile: Hostile,
) -> None:
    """On every topic: non-JSON, non-objects, wrong types, missing fields and a 5 MB payload are dropped (counted
    as malformed, none as a handler crash), and a good event published right after reaches its recipient."""
    async with hostile() as (daemon, calm):
        chat, room_uuid = await _watcher_in_room(daemon)
        dispatcher = daemon.service.dispatcher
        for topic, good in GOOD_EVENTS.items():
            bad = [*NOT_EVENTS, *(json.dumps(e).encode() for e in WRONG_TYPES[topic] + MISSING_FIELDS[topic]),
                   ENORMOUS]
            for payload in bad:
                await daemon.publish(topic, payload)
            tag = uuid.uuid4().hex
            event = json.dumps(good(tag)).replace("@ROOM@", room_uuid)
            await daemon.publish(topic, event)
            if topic == "chat":
                while (frame := await chat.next()).get("@type") == "ROOM_UPDATE":
                    pass
                assert frame["Uuid"] == tag
            else:
                assert tag in json.dumps(await calm.next())
            assert dispatcher.malformed[topic] == len(bad), topic  # each bad payload, counted once
        assert not dispatcher.crashed
        assert not list(tracebacks)


# where each topic's event may hold any value that its rules pass on to browsers
_ANY_VALUE_AT = {"tree": "Target", "meta": "Target", "tasks": "TaskUpdated", "idm": "User", "activity": "Activity",
                 "chat": "Message"}
NOT_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"[1.8e308]"]


@pytest_twisted.ensureDeferred
async def test_bus_events_holding_nan_or_infinity_are_malformed(tracebacks: EventLoggingObserver,
                                                                 hostile: Hostile) -> None:
    """A value ``json.loads`` reads as a float that is not finite (NaN, Infinity, 1e400) has no JSON form: passed on,
    it made a frame holding ``NaN`` or ``Infinity``, which a browser's ``JSON.parse`` refuses (PROTOCOL.md §1: one
    JSON value per frame). On every topic such an event is malformed (§4: counted, dropped), and the good event
    published right after is the next frame its recipient gets."""
    async with hostile() as (daemon, calm):
        chat, room_uuid = await _watcher_in_room(daemon)
        dispatcher = daemon.service.dispatcher
        for topic, good in GOOD_EVENTS.items():
            for value in NOT_FINITE:
                event = good(uuid.uuid4().hex)
                event[_ANY_VALUE_AT[topic]]["Extra"] = "@VALUE@"
                await daemon.publish(topic, json.dumps(event).replace('"@ROOM@"', json.dumps(room_uuid))
                                     .replace('"@VALUE@"', value.decode()).encode())
            tag = uuid.uuid4().hex
            await daemon.publish(topic, json.dumps(good(tag)).replace("@ROOM@", room_uuid))
            if topic == "chat":
                while (frame := await chat.next()).get("@type") == "ROOM_UPDATE":
                    pass
                assert frame["Uuid"] == tag
            else:
                assert tag in json.dumps(await calm.next()), topic
            assert dispatcher.malformed[topic] == len(NOT_FINITE), topic
        assert not dispatcher.crashed
        assert not list(tracebacks)


@pytest_twisted.ensureDeferred
async def test_a_bus_event_nested_past_the_fixed_bound_is_malformed(tracebacks: EventLoggingObserver,
                                                                     hostile: Hostile) -> None:
    """A task event 512 levels deep is delivered; 513, 800 and 974 deep are malformed, as 1,000 deep is: the bound
    is ``MAX_DEPTH``, not the depth where ``json.loads`` runs out of stack (~975 levels on an interpreted
    daemon, a few more on a compiled one, which delivered what the interpreted one dropped)."""
    async with hostile() as (daemon, calm):
        def task(tag: str, depth: int) -> bytes:
            return (b'{"TaskUpdated":{"TriggerOwner":"watcher","ID":"%s","X":' % tag.encode()
                    + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}")

        for depth in (513, 800, 974, 1000):
            await daemon.publish("tasks", task(f"deep-{depth}", depth))
        await daemon.publish("tasks", task("at-the-bound", 512))
        assert (await calm.next())["TaskUpdated"]["ID"] == "at-the-bound"
        assert daemon.service.dispatcher.malformed["tasks"] == 4
        assert not daemon.service.dispatcher.crashed
        assert not list(tracebacks)


@pytest_twisted.ensureDeferred
async def test_a_crashing_handler_is_counted_and_logged_and_other_topics_go_on(
    monkeypatch: pytest.MonkeyPatch, tracebacks: EventLoggingObserver, hostile: Hostile,
) -> None:
    """A topic handler that raises (a bug, forced here) is counted in dispatcher.crashed and logged with its
    traceback; other topics still deliver, and the topic itself delivers again once the bug is gone."""
    async with hostile() as (daemon, calm):
        def broken(self: TaskHandler, event: Frame) -> None:
            raise ZeroDivisionError("a bug in the tasks rules")

        monkeypatch.setattr(TaskHandler, "handle", broken)
        await daemon.publish("tasks", GOOD_EVENTS["tasks"]("t1"))
        await still_served(daemon, calm)  # published after the task event: the crash came first
        assert daemon.service.dispatcher.crashed["tasks"] == 1
        assert [e["log_failure"].type for e in tracebacks] == [ZeroDivisionError]
        monkeypatch.undo()
        await daemon.publish("tasks", GOOD_EVENTS["tasks"]("t2"))
        assert (await calm.next())["TaskUpdated"]["ID"] == "t2"


# --------------------------------------------------------------------------- token expiry while connected


def expiring_token(login: str, exp: int) -> str:
    return jwt.encode({"name": login, "sub": f"uuid-{login}", "workspaces": [HOME], "exp": exp}, SECRET,
                      algorithm="HS256")


@pytest_twisted.ensureDeferred
async def test_a_token_expiring_while_connected_closes_4001(hostile: Hostile) -> None:
    """With leeway 0, sockets on /ws and /chat whose token reaches exp are closed with 4001 'token expired'."""
    async with hostile("[auth]\nleeway = 0\n") as (daemon, _):
        exp = int(time.time()) + 2
        clients = [await connect(daemon.port, path) for path in ("/ws", "/chat")]
        for client in clients:
            assert (await client.subscribe(expiring_token("alice", exp)))["exp"] == exp
        for client in clients:
            assert await client.wait_closed(timeout=5) == (4001, "token expired")
        assert time.time() >= exp


@pytest_twisted.ensureDeferred
async def test_a_fresher_token_before_exp_keeps_the_socket(hostile: Hostile) -> None:
    """Sockets (/ws and /chat) that re-subscribe with a fresher token before exp stay open past the first exp
    (when control sockets holding the same first token are closed 4001) and are still served."""
    async with hostile("[auth]\nleeway = 0\n") as (daemon, _):
        exp = int(time.time()) + 2
        refreshed = {path: await connect(daemon.port, path) for path in ("/ws", "/chat")}
        controls = [await connect(daemon.port, path) for path in ("/ws", "/chat")]
        for client in [*refreshed.values(), *controls]:
            await client.subscribe(expiring_token("alice", exp))
        for client in refreshed.values():
            assert (await client.subscribe(expiring_token("alice", exp + 3600)))["exp"] == exp + 3600
        for client in controls:
            assert await client.wait_closed(timeout=5) == (4001, "token expired")
        await still_served(daemon, refreshed["/ws"])
        refreshed["/chat"].send_json({"@type": "FOO"})
        assert (await refreshed["/chat"].next())["error"] == "unknown @type 'FOO'"
        assert not any(client.closed.called for client in refreshed.values())
