"""Transport security, for real: TLS on the listen endpoint string, and Redis with a password and over TLS.

Certificates are made here (a throwaway CA and a server certificate for 127.0.0.1/localhost, with
``cryptography``). The WebSocket client is Autobahn over a ``tls:`` client endpoint trusting that CA;
Redis runs as private ``redis-server`` processes on loopback (the Debian build here supports ``--tls-port``),
stopped by pid at the end of each test. The external publisher is ``redis-cli`` (with ``--tls`` where needed).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
import txredisapi
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from tests.support.daemon import SECRET, Daemon, StartGateway, channels, new_prefix, token, workspace
from tests.support.rawtcp import raw_connect
from tests.support.redis_server import RedisServer, free_port, redis_server_binary
from tests.support.waiting import wait_until
from tests.support.wsclient import TIMEOUT, Client, connect
from wsgw.config import config_from_string
from wsgw.service import GatewayService

# Twisted's ssl: server endpoint hands pyOpenSSL X509 and PKey objects to pyOpenSSL 26, which warns (not our code)
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL .* objects is deprecated:DeprecationWarning")

HOME = workspace("w-home", "home", "ds/home")
REDIS_CLI = "/usr/bin/redis-cli"

# --------------------------------------------------------------------------- certificates


@attrs.frozen
class Pki:
    """Files of a throwaway CA and of a server certificate it signed (for 127.0.0.1 and localhost)."""

    trust_dir: Path  # holds only ca.pem: what a client trusts (Twisted's trustRoots takes a directory)
    ca: Path
    key: Path
    cert: Path
    client_key: Path  # a client certificate the CA signed, for mutual TLS (Redis tls-auth-clients yes)
    client_cert: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, label: str = "wsgw test") -> Pki:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(name: str, usage: x509.ObjectIdentifier, path: Path, key_path: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)

    trust_dir = directory / "trust"
    trust_dir.mkdir(parents=True)
    pki = Pki(trust_dir, trust_dir / "ca.pem", directory / "server.key", directory / "server.pem",
              directory / "client.key", directory / "client.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issue("localhost", ExtendedKeyUsageOID.SERVER_AUTH, pki.cert, pki.key)
    issue("wsgw", ExtendedKeyUsageOID.CLIENT_AUTH, pki.client_cert, pki.client_key)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


# --------------------------------------------------------------------------- helpers


async def connect_tls(port: int, trust_dir: Path, path: str = "/ws", host: str = "127.0.0.1") -> Client:
    """A real Autobahn client over a ``tls:`` client endpoint that trusts only ``trust_dir``'s CA."""
    factory = WebSocketClientFactory(f"wss://{host}:{port}{path}")
    factory.protocol = Client
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    endpoint = clientFromString(reactor, f"tls:{host}:{port}:trustRoots={trust_dir}:timeout=5")
    proto = factory.buildProtocol(None)
    await connectProtocol(endpoint, proto)
    opened = proto.opened
    opened.addTimeout(TIMEOUT, reactor)
    return await opened  # type: ignore[no-any-return]


def password_file(directory: Path, password: str) -> Path:
    path = directory / "redis.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


class LogLines:
    """Every log event while open; ``when(text)`` fires once a formatted event contains ``text`` (bounded)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._waiting: list[tuple[str, Deferred[None]]] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            line = formatEvent(event) or ""
            self.lines.append(line)
            for text, d in list(self._waiting):
                if text in line:
                    self._waiting.remove((text, d))
                    d.callback(None)

        self._observer = observe

    def when(self, text: str, timeout: float = 10) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        d.addTimeout(timeout, reactor)
        return d

    def __enter__(self) -> LogLines:
        globalLogPublisher.addObserver(self._observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observer)


async def redis_cli(*args: str) -> str:
    """Run redis-cli without blocking the reactor; fails on a non-zero exit."""
    out, err, code = await getProcessOutputAndValue(REDIS_CLI, args, env=dict(os.environ), reactor=reactor)
    assert code == 0, (out, err)
    return out.decode().strip()  # type: ignore[no-any-return]


class TlsRedisServer:
    """A private redis-server listening with TLS only (``--port 0 --tls-port N``), requiring a client
    certificate signed by the test CA (mutual TLS) and a password."""

    def __init__(self, pki: Pki, password: str, timeout: float = 10.0) -> None:
        self.port = free_port()
        self.password = password
        self._pki = pki
        self._timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TlsRedisServer:
        args = [redis_server_binary() or "redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(self._pki.cert), "--tls-key-file", str(self._pki.key),
                "--tls-ca-cert-file", str(self._pki.ca), "--tls-auth-clients", "yes",
                "--requirepass", self.password, "--save", "", "--appendonly", "no", "--daemonize", "no"]
        process = self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
        assert process.stdout is not None
        output, deadline = b"", time.monotonic() + self._timeout
        while b"Ready to accept connections" not in output:
            readable, _, _ = select.select([process.stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(process.stdout.fileno(), 65536) if readable else b""
            if not chunk:
                self.__exit__()
                raise RuntimeError(f"TLS redis-server did not start: {output.decode(errors='replace')}")
            output += chunk
        process.stdout.close()  # with --loglevel notice nothing more is written until shutdown
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self._timeout)


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password="s3cret pass-" + uuid.uuid4().hex) as server:
        yield server


# --------------------------------------------------------------------------- TLS on the listen endpoint


@pytest_twisted.ensureDeferred
async def test_tls_listener_serves_a_verified_wss_client(pki: Pki, gateway: StartGateway) -> None:
    """With listen = ssl:0:privateKey=...:certKey=..., a wss client that verifies the certificate (CA trusted,
    name 127.0.0.1 checked) subscribes on /ws and /chat and receives a published event."""
    listen = f"ssl:0:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1"
    daemon = await gateway(redis=None, overrides={"server.listen": listen})
    client = await connect_tls(daemon.port, pki.trust_dir)
    assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    chat = await connect_tls(daemon.port, pki.trust_dir, "/chat", host="localhost")
    assert (await chat.subscribe(token("bob")))["user"] == "bob"
    event = {"Target": {"Uuid": "n1", "Path": "ds/home/secret.pdf"}}
    await daemon.service.bus.publish("tree", json.dumps(event).encode())
    assert (await client.next())["Target"]["Path"] == "home/secret.pdf"
    assert client.transport.getHost().port != 0  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_tls_listener_is_refused_by_a_client_that_does_not_trust_its_ca(pki: Pki, tmp_path: Path,
                                                                              gateway: StartGateway) -> None:
    """A client trusting another CA fails the TLS handshake (no WebSocket opens), and a plain ws:// client on the
    TLS port gets nothing; a trusting client still connects afterwards."""
    other = make_pki(tmp_path / "other", "someone else")
    listen = f"ssl:0:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1"
    daemon = await gateway(redis=None, overrides={"server.listen": listen})
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        await connect_tls(daemon.port, other.trust_dir)
    with pytest.raises(ConnectionError, match="closed before open"):
        await connect(daemon.port)
    good = await connect_tls(daemon.port, pki.trust_dir)
    assert (await good.subscribe(token("alice", [HOME])))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_a_tls_listener_holds_its_cap_and_deadline(pki: Pki, gateway: StartGateway,
                                                         tracebacks: EventLoggingObserver) -> None:
    """Behind TLS (which wraps what the Site builds and cannot take a refusal by None): with max_connections = 2,
    two silent sockets fill the listener, a third is closed at once; at handshake_timeout (1 s) the silent ones
    are closed although their TLS handshake never began; then a wss client gets in. Nothing logs a traceback."""
    listen = f"ssl:0:privateKey={pki.key}:certKey={pki.cert}:interface=127.0.0.1"
    daemon = await gateway(redis=None, overrides={"server.listen": listen, "server.max_connections": "2",
                                                  "server.handshake_timeout": "1"})
    silent = [await raw_connect(daemon.port) for _ in range(2)]
    guard = daemon.service.public_guard
    await wait_until(lambda: guard.open == 2, "the two silent sockets to be accepted")
    third = await raw_connect(daemon.port)
    assert await third.wait_lost(2) == b""
    assert guard.refused["total"] == 1
    for raw in silent:
        await raw.wait_lost(4)
    assert guard.refused["handshake_timeout"] == 2 and guard.open == 0
    client = await connect_tls(daemon.port, pki.trust_dir)
    assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    assert not tracebacks


# --------------------------------------------------------------------------- Redis with a password


@pytest_twisted.ensureDeferred
async def test_redis_with_a_password_delivers_events_and_serves_chat(redis_with_password: RedisServer,
                                                                      tmp_path: Path, gateway: StartGateway) -> None:
    """With redis_password_file, the bus and the chat store authenticate to a password-protected Redis: an event
    published by another (authenticated) client arrives, a chat JOIN is stored; the password is never logged."""
    server = redis_with_password
    assert server.password is not None
    secret_file = password_file(tmp_path, server.password)
    with LogLines() as logs:
        daemon = await gateway(redis=server.endpoint, overrides={"server.redis_password_file": str(secret_file)})
        publisher: Any = None
        try:
            client = await connect(daemon.port)
            assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
            publisher = await txredisapi.Connection("127.0.0.1", server.port, password=server.password,
                                                    reconnect=False)
            event = {"Target": {"Uuid": "n1", "Path": "ds/home/a.txt"}}
            assert await publisher.publish(channels(daemon.prefix)["tree"], json.dumps(event)) == 1
            assert (await client.next())["Target"]["Path"] == "home/a.txt"
            chat = await connect(daemon.port, "/chat")
            await chat.subscribe(token("alice", [HOME]))
            chat.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "n1"}})
            assert (await chat.next())["@type"] == "ROOM_UPDATE"
        finally:
            if publisher is not None:
                await publisher.disconnect()
        await daemon.stop()  # inside LogLines: what the shutdown logs is checked for the password too
    assert not [line for line in logs.lines if server.password in line]


@pytest_twisted.ensureDeferred
async def test_a_wrong_redis_password_leaves_healthz_503_and_the_daemon_up(redis_with_password: RedisServer,
                                                                            tmp_path: Path) -> None:
    """With a wrong password the daemon starts anyway, keeps retrying (logged, without the password), /healthz
    answers 503 naming the problem, sockets still open, a subscribe is refused 1013 (the revocations cannot be
    loaded: fail closed, PROTOCOL.md §3.1), and it stops cleanly."""
    server = redis_with_password
    prefix = new_prefix()
    wrong = "not-the-password-" + uuid.uuid4().hex
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    text = (f"[server]\nlisten = tcp:0:interface=127.0.0.1\nredis = {server.endpoint}\n"
            f"redis_password_file = {password_file(tmp_path, wrong)}\nshutdown_timeout = 5\n[topics]\n{topics}\n"
            "[chat]\nstore_timeout = 1\n")
    config = config_from_string(text, "<wrong password>", overrides={"admin.listen": ""},
                                environ={"WSGW_HMAC_SECRET": SECRET})
    with LogLines() as logs:
        service = GatewayService(config, reactor)
        failed = logs.when("connection setup failed")
        service.startService()
        daemon = Daemon(service, prefix)
        try:
            await failed
            again = logs.when("connection setup failed")  # it retries: a second refusal comes later
            health = await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")
            body = (await health.text()).strip()
            assert health.code == 503 and body.startswith("bus "), body
            assert "WRONGPASS" in body or "invalid" in body, body
            await again
            assert service.running and not service.bus.connected
            assert (await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")).code == 503
            client = await connect(daemon.port)
            answer = await client.subscribe(token("alice", [HOME]))
            assert answer == {"@type": "error", "error": "subscribe: revocations unavailable, try again"}
            assert (await client.wait_closed())[0] == 1013
        finally:
            await daemon.stop()
    assert not [line for line in logs.lines if wrong in line]


# --------------------------------------------------------------------------- Redis over TLS


@pytest_twisted.ensureDeferred
async def test_redis_over_tls_with_a_password_delivers_events(pki: Pki, tmp_path: Path,
                                                               gateway: StartGateway) -> None:
    """redis = tls:127.0.0.1:<port>:trustRoots=<dir>:certificate=...:privateKey=... (plus a password) against a
    TLS-only redis-server that requires client certificates: the daemon connects, an event published with
    redis-cli --tls arrives, and a chat JOIN is stored over TLS."""
    password = "tls-pass-" + uuid.uuid4().hex
    with TlsRedisServer(pki, password) as server:
        endpoint = (f"tls:127.0.0.1:{server.port}:trustRoots={pki.trust_dir}:certificate={pki.client_cert}"
                    f":privateKey={pki.client_key}:timeout=5")
        daemon = await gateway(redis=endpoint,
                               overrides={"server.redis_password_file": str(password_file(tmp_path, password))})
        client = await connect(daemon.port)
        assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
        event = json.dumps({"Target": {"Uuid": "n1", "Path": "ds/home/over-tls.txt"}})
        receivers = await redis_cli("--tls", "--cacert", str(pki.ca), "--cert", str(pki.client_cert),
                                    "--key", str(pki.client_key), "-h", "127.0.0.1", "-p", str(server.port),
                                    "--no-auth-warning", "-a", password, "PUBLISH", channels(daemon.prefix)["tree"],
                                    event)
        assert receivers == "1"
        assert (await client.next())["Target"]["Path"] == "home/over-tls.txt"
        chat = await connect(daemon.port, "/chat")
        await chat.subscribe(token("alice", [HOME]))
        chat.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "n1"}})
        assert (await chat.next())["@type"] == "ROOM_UPDATE"
        health = await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")
        assert health.code == 200
