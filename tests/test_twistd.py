"""The daemon as operators run it: `twistd -n wsgw --config ...` in its own process, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.daemon import SECRET, Publisher, channels, new_prefix, token, workspace
from tests.wsclient import TIMEOUT, connect

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Twistd(ProcessProtocol):
    """Collects the daemon's log; ``logged(text)`` fires when it appears, ``ended`` with (exit code, signal)."""

    def __init__(self) -> None:
        self.output = b""
        self._waiting: list[tuple[bytes, Deferred[None]]] = []
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def logged(self, text: bytes, timeout: float = 30) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        d.addTimeout(timeout, reactor)
        self.childDataReceived(0, b"")
        return d

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        for text, d in list(self._waiting):
            if text in self.output:
                self._waiting.remove((text, d))
                d.callback(None)

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        for _, d in self._waiting:
            d.errback(RuntimeError("twistd exited:\n" + self.output.decode(errors="replace")))
        self._waiting.clear()
        self.ended.callback((reason.value.exitCode, reason.value.signal))


def spawn(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[Twistd, object]:
    proto = Twistd()
    env = {**os.environ, "WSGW_HMAC_SECRET": SECRET, **(env_extra or {})}
    transport = reactor.spawnProcess(proto, TWISTD, [TWISTD, "--nodaemon", "--pidfile=", "wsgw", *args], env=env)
    return proto, transport


@pytest_twisted.ensureDeferred
async def test_twistd_serves_events_and_stops_on_sigterm(tmp_path) -> None:
    """twistd runs the plugin against the real Redis: a published event arrives; SIGTERM closes 1000 and exits 0."""
    prefix = new_prefix()
    port = free_port()
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    config = tmp_path / "wsgw.ini"
    config.write_text(f"[server]\nredis = tcp:127.0.0.1:6379\n[topics]\n{topics}\n[delivery]\nbatch_window = 0\n"
                      "[admin]\nlisten =\n")
    proto, transport = spawn(["--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    pub = Publisher(prefix)
    try:
        await proto.logged(b"listening on")
        await proto.logged(b"Redis bus subscriber connected")
        client = await connect(port)
        ws = workspace("w1", "files", "ds/files")
        assert (await client.subscribe(token("alice", [ws])))["@type"] == "subscribed"
        assert await pub.publish("tree", {"Target": {"Uuid": "n", "Path": "ds/files/a.txt"}}) == 1
        assert (await client.next())["Target"]["Path"] == "files/a.txt"
        transport.signalProcess("TERM")  # type: ignore[attr-defined]
        assert await client.wait_closed() == (1000, "server shutting down")
        proto.ended.addTimeout(TIMEOUT * 3, reactor)
        assert await proto.ended == (0, None)
        assert b"shutdown complete" in proto.output
    finally:
        await pub.close()
        if not proto.ended.called:
            os.kill(transport.pid, signal.SIGKILL)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_a_port_in_use() -> None:
    """A listen port that cannot be bound makes twistd exit non-zero, so systemd sees the failure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proto, _ = spawn(["--embedded", "--listen", f"tcp:{port}:interface=127.0.0.1"])
        proto.ended.addTimeout(30, reactor)
        code, _ = await proto.ended
        assert code not in (0, None)
        assert b"Address already in use" in proto.output or b"CannotListenError" in proto.output


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_an_unknown_config_key(tmp_path) -> None:
    """An unknown key makes twistd exit non-zero with a message naming the key and the file."""
    config = tmp_path / "bad.ini"
    config.write_text("[server]\nlistne = tcp:1\n")
    proto, _ = spawn(["--config", str(config)])
    proto.ended.addTimeout(30, reactor)
    code, _ = await proto.ended
    assert code not in (0, None)
    assert b"bad.ini: unknown key [server] listne" in proto.output
