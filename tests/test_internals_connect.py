"""What the connect path relies on inside Autobahn and PyJWT (``wsgw/internals/``), pinned.

The connect storm's CPU (bench/RESULTS.md "Connect path") went partly into work
whose result nobody reads: the arguments of Autobahn's debug lines, computed
while its debug level is off. An upgrade that changes what is relied on here
fails by name instead of quietly making the connect path slower or a debug
line wrong.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import inspect
import json
from typing import Any

import autobahn.twisted.websocket
import autobahn.websocket.protocol
import jwt
import jwt.api_jws
import jwt.api_jwt
import pytest
import txaio
from autobahn import util as autobahn_util
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import HMACAlgorithm
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from wsgw.internals import autobahn as internals
from wsgw.internals.autobahn import Lazy, ServerFactory, ServerProtocol
from wsgw.internals.pyjwt import (
    FAST_JSON,
    PreparedHMAC,
    decode_segment,
    decode_segments_fast,
    json_loads_fast,
    prepare_keys_once,
)
from wsgw.internals.twisted import take_over

_LAZY_NAMES = {"hltype", "hlval", "pformat"}


def _calls_outside_log_arguments(module: Any) -> list[str]:
    """Every call of hltype, hlval or pformat in ``module`` that is not a keyword argument of a ``self.log.*``
    call, as ``function:line``."""
    tree = ast.parse(inspect.getsource(module))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _LAZY_NAMES:
            keyword = parents[node]
            call = parents.get(keyword)
            if not (isinstance(keyword, ast.keyword) and isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Attribute)
                    and call.func.value.attr == "log"):
                scope = keyword
                while scope in parents and not isinstance(scope, ast.FunctionDef):
                    scope = parents[scope]
                found.append(f"{getattr(scope, 'name', '?')}:{node.func.id}")
    return found


def test_autobahns_debug_helpers_feed_only_log_lines_in_the_modules_made_lazy() -> None:
    """``hltype``/``hlval`` may return a Lazy in these modules only because each use is a log line's argument;
    the one ``pformat`` outside a log call (``Timings.__str__``, which must return a str) is why ``pformat``
    is lazy only during ``_connectionMade``."""
    assert _calls_outside_log_arguments(autobahn.twisted.websocket) == []
    assert _calls_outside_log_arguments(autobahn.websocket.protocol) == ["__str__:pformat"]
    made = inspect.getsource(autobahn.websocket.protocol.WebSocketProtocol._connectionMade)
    assert made.count("pformat(") == 1 and 'self.log.debug("\\n{attrs}", attrs=pformat(configAttrLog))' in made
    assert autobahn.websocket.protocol.pformat is internals._PFORMAT


def test_lazy_helpers_format_as_autobahns_own() -> None:
    def f() -> None:
        pass

    for module in (autobahn.twisted.websocket, autobahn.websocket.protocol):
        assert isinstance(module.hltype(f), Lazy)
        assert str(module.hltype(f)) == autobahn_util.hltype(f)
        assert f"{module.hlval(42)}" == autobahn_util.hlval(42)
        assert repr(module.hlval("x")) == repr(autobahn_util.hlval("x"))
    internals.lazy_debug_arguments()  # idempotent: still Autobahn's own underneath
    assert str(autobahn.twisted.websocket.hltype(f)) == autobahn_util.hltype(f)


def _connect(log: Any = None) -> ServerProtocol:
    factory = ServerFactory(reactor, Clock())
    factory.protocol = ServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0)
    protocol: Any = factory.buildProtocol(None)
    if log is not None:
        protocol.log = log
    protocol.makeConnection(StringTransport())
    return protocol  # type: ignore[no-any-return]


def test_with_debug_off_a_new_socket_formats_no_options(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[object] = []
    monkeypatch.setattr(internals, "_lazy_pformat", internals._lazy(lambda o: formatted.append(o) or "x"))
    protocol = _connect()
    assert protocol.log.debug is txaio.tx._no_op  # Autobahn's default level in wsgw: info
    assert formatted == []
    assert protocol.maxFramePayloadSize == 0 and protocol.state == ServerProtocol.STATE_CONNECTING
    assert autobahn.websocket.protocol.pformat is internals._PFORMAT  # lent for the call only


def test_with_debug_on_the_options_line_reads_as_before() -> None:
    events: list[dict[str, Any]] = []
    protocol = _connect(txaio.make_logger(level="debug", observer=events.append))
    lines = [formatEvent(e) for e in events]
    options = [line for line in lines if "maxFramePayloadSize" in line]
    assert len(options) == 1
    assert options[0] == "\n" + internals._PFORMAT(  # (the options are the protocol class's: see below)
        [(a, getattr(protocol, a), "ServerProtocol") for a in protocol.CONFIG_ATTRS])
    assert ('<autobahn.twisted.websocket.WebSocketAdapterProtocol.connectionMade> connection established for peer='
            '"tcp4:192.168.1.1:54321"') in lines  # hltype and hlval, formatted when written


def test_lazy_debug_arguments_cost_no_python_frame() -> None:
    """``hltype``/``hlval`` in Autobahn's modules build their ``Lazy`` in C (``functools.partial``)."""
    import functools

    assert isinstance(autobahn.websocket.protocol.hltype, functools.partial)
    assert isinstance(autobahn.twisted.websocket.hlval, functools.partial)


# --------------------------------------------------------------------------- PyJWT


def test_pyjwt_prepares_the_hmac_secret_for_every_token_unless_told_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for ``prepare_keys_once``, and what it relies on: a ``PyJWT`` verifies through its ``_jws``,
    whose HMAC algorithms can be swapped through PyJWS's public register/unregister."""
    secret = b"s" * 40
    tokens = [jwt.encode({"n": i}, secret, algorithm="HS256") for i in range(3)]
    prepared: list[bytes] = []
    real = HMACAlgorithm.prepare_key
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", lambda self, key: prepared.append(key) or real(self, key))
    plain = jwt.PyJWT()
    assert isinstance(plain._jws, jwt.PyJWS)
    for t in tokens:
        plain.decode(t, secret, algorithms=["HS256"])
    assert len(prepared) == 3
    once = jwt.PyJWT()
    prepare_keys_once(once)
    for alg in ("HS256", "HS384", "HS512"):
        assert isinstance(once._jws.get_algorithm_by_name(alg), PreparedHMAC)
    assert not isinstance(once._jws.get_algorithm_by_name("RS256"), PreparedHMAC)
    assert [once.decode(t, secret, algorithms=["HS256"])["n"] for t in tokens] == [0, 1, 2]
    assert len(prepared) == 4
    with pytest.raises(jwt.InvalidSignatureError):
        once.decode(tokens[0], b"t" * 40, algorithms=["HS256"])
    assert len(prepared) == 5
    assert jwt.PyJWT()._jws.get_algorithm_by_name("HS256").__class__ is HMACAlgorithm  # others keep PyJWT's


_SEGMENTS = [b"", b"A", b"AA", b"AQ", b"AB", b"AAA", b"AAE", b"AAB", b"AAAA", b"AA==", b"AQ==", b"AB==", b"AAE=",
             b"AAB=", b"A===", b"AA=", b"AAA==", b"=", b"==", b"!!!!", b"AA!A", b"AA+A", b"AA/A", b"AA-_", b"AA A",
             b"eyJhbGciOiJIUzI1NiJ9", b"eyJhbGciOiJIUzI1NiJ9=", b"\xff\xfe", b"AAAA\n", b"\nAAAA", b"AAAAA"]


@given(st.one_of(st.binary(max_size=12), st.text(alphabet="AQBgw048-_=+/!Ez \n", max_size=12).map(str.encode)))
def test_segments_decode_as_pyjwts_own(segment: bytes) -> None:
    """``decode_segment`` returns what PyJWT's ``_decode_base64url_segment`` returns, and refuses what it refuses
    with the same error."""
    _same_as_pyjwt(segment)


def test_segments_decode_as_pyjwts_own_at_the_edges() -> None:
    for segment in _SEGMENTS:
        _same_as_pyjwt(segment)


def _same_as_pyjwt(segment: bytes) -> None:
    def outcome(decode: Any) -> tuple[str, Any]:
        try:
            return "ok", decode(segment, "header")
        except jwt.DecodeError as e:
            return "refused", str(e)

    assert outcome(decode_segment) == outcome(jwt.PyJWS._decode_base64url_segment), segment


def test_pyjwt_decodes_segments_through_the_method_a_decoder_is_given() -> None:
    """``decode_segments_fast`` gives ``decoder`` ``decode_segment`` (PyJWS calls ``self._decode_base64url_segment``
    for each of a token's three segments); other decoders keep PyJWT's."""
    calls: list[bytes] = []
    decoder = jwt.PyJWT()
    decode_segments_fast(decoder)
    decoder._jws._decode_base64url_segment = lambda s, name: (calls.append(s), decode_segment(s, name))[1]
    token = jwt.encode({"n": 1}, b"k" * 40, algorithm="HS256")
    assert decoder.decode(token, b"k" * 40, algorithms=["HS256"]) == {"n": 1}
    assert b".".join(calls) == token.encode()
    fast = jwt.PyJWT()
    decode_segments_fast(fast)
    assert fast._jws._decode_base64url_segment is decode_segment
    assert jwt.PyJWT()._jws._decode_base64url_segment is not decode_segment
    with pytest.raises(jwt.DecodeError):
        fast.decode(token[:-1] + "!", b"k" * 40, algorithms=["HS256"])


# --------------------------------------------------------------------------- Twisted


class _Seen(Protocol):
    def __init__(self) -> None:
        self.got = b""

    def dataReceived(self, data: bytes) -> None:
        self.got += data


class _Refusing(Factory):
    def buildProtocol(self, addr: Any) -> None:
        return None


def test_take_over_replaces_the_protocol_on_the_transport_or_behind_tls() -> None:
    """``take_over`` hands a socket to a new protocol as Autobahn's ``WebSocketResource`` does: the transport's
    ``protocol`` (plain TCP) or the TLS wrapper's ``wrappedProtocol``, connected, given the first read."""
    factory = Factory.forProtocol(_Seen)
    plain: Any = StringTransport()
    plain.protocol = None
    assert take_over(plain, factory, b"x")
    assert isinstance(plain.protocol, _Seen) and plain.protocol.got == b"x" and plain.protocol.transport is plain
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
    wrapper.makeConnection(StringTransport())
    assert take_over(wrapper, factory, b"y")
    assert isinstance(wrapper.wrappedProtocol, _Seen) and wrapper.wrappedProtocol.got == b"y"
    assert wrapper.wrappedProtocol.transport is wrapper
    assert not take_over(StringTransport(), _Refusing(), b"z")


class _CountedOption:
    """A protocol class's option that counts its reads."""

    def __init__(self, value: Any) -> None:
        self.value, self.reads = value, 0

    def __get__(self, instance: Any, owner: Any) -> Any:
        self.reads += 1
        return self.value


@pytest.mark.parametrize("debug", [False, True])
def test_with_debug_off_autobahn_does_not_loop_over_the_options_of_a_new_socket(debug: bool) -> None:
    """The options are class attributes: Autobahn's loop would read each twice (``hasattr``, then for the debug
    line), copying none; with debug off it does not run, with debug on the line lists them as before."""
    factory = ServerFactory(reactor, Clock())
    factory.protocol = ServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0)
    option = _CountedOption(factory.protocol.maxFramePayloadSize)
    factory.protocol.maxFramePayloadSize = option
    protocol: Any = factory.buildProtocol(None)
    events: list[dict[str, Any]] = []
    if debug:
        protocol.log = txaio.make_logger(level="debug", observer=events.append)
    protocol.makeConnection(StringTransport())
    assert option.reads == (2 if debug else 0)
    assert "CONFIG_ATTRS" not in protocol.__dict__ and protocol.CONFIG_ATTRS == ServerProtocol.CONFIG_ATTRS
    assert any("maxFramePayloadSize" in formatEvent(e) for e in events) == debug


def test_pyjwt_reads_header_and_claims_through_its_modules_json_loads() -> None:
    """What ``json_loads_fast`` relies on: PyJWT's header and claims readers call ``json.loads`` through their
    module's global ``json``."""
    assert "json.loads(header_data)" in inspect.getsource(jwt.api_jws.PyJWS._load)
    assert 'json.loads(decoded["payload"])' in inspect.getsource(jwt.api_jwt.PyJWT._decode_payload)


@pytest.mark.parametrize("claims", [
    {"name": "alice", "exp": 2_000_000_000, "big": 123456789012345678901234567890, "neg": -9223372036854775809},
    {"name": "zoë", "exp": 2_000_000_000.5, "nan": float("nan"), "inf": float("inf"), "s": "\ud800"},
    {"name": "bob", "exp": 2_000_000_000, "nested": {"a": [1, 2.5, None, True, "x"]}, "name2": "dup"},
])
def test_pyjwt_with_fast_json_reads_the_same_claims(claims: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The claims PyJWT reads with ``FAST_JSON`` are those it reads with the standard ``json`` (repr: NaN, -0.0,
    int against float), and a header or claims that are not JSON objects fail with the same message."""
    secret = b"s" * 32
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = jwt.utils.base64url_encode(json.dumps(claims).encode("utf-8", "surrogatepass"))
    signing_input = header + b"." + body
    token = (signing_input + b"." + jwt.utils.base64url_encode(
        hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()

    def read(token: str) -> str:
        try:
            return repr(jwt.decode(token, secret, algorithms=["HS256"]))
        except jwt.PyJWTError as e:
            return f"{type(e).__name__}: {e}"

    bad = header + b"." + jwt.utils.base64url_encode(b"[1, 2]")
    bad_token = (bad + b"." + jwt.utils.base64url_encode(hmac.new(secret, bad, hashlib.sha256).digest())).decode()
    monkeypatch.setattr(jwt.api_jws, "json", json)
    monkeypatch.setattr(jwt.api_jwt, "json", json)
    expected = read(token), read(bad_token), read(token + "x"), read("e30." + token.partition(".")[2])
    json_loads_fast()
    assert jwt.api_jws.json is FAST_JSON and jwt.api_jwt.json is FAST_JSON
    assert (read(token), read(bad_token), read(token + "x"), read("e30." + token.partition(".")[2])) == expected
