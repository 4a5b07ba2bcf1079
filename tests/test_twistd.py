"""The daemon as operators run it: `twistd -n wsgw --config ...` in its own process, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket

import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Publisher, channels, new_prefix, token, workspace
from tests.support.redis_server import free_port
from tests.support.twistd import spawn
from tests.support.wsclient import TIMEOUT, connect


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
