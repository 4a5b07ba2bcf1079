"""The daemon as operators run it: `twistd -n wsgw --config ...` in its own process, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket

import pytest_twisted
import treq
from twisted.internet import reactor

from tests.support.daemon import Publisher, channels, new_prefix, scrape, token, value, workspace
from tests.support.rawtcp import Raw, raw_connect
from tests.support.redis_server import free_port, shared_endpoint
from tests.support.twistd import spawn
from tests.support.waiting import wait_until
from tests.support.wsclient import TIMEOUT, connect
from wsgw.web.listener import RESERVED_DESCRIPTORS


@pytest_twisted.ensureDeferred
async def test_twistd_serves_events_and_stops_on_sigterm(tmp_path) -> None:
    """twistd runs the plugin against the real Redis: a published event arrives; SIGTERM closes 1000 and exits 0."""
    prefix = new_prefix()
    port = free_port()
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    config = tmp_path / "wsgw.ini"
    config.write_text(f"[server]\nredis = {shared_endpoint()}\n[topics]\n{topics}\n[delivery]\nbatch_window = 0\n"
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
        assert code == 1
        assert b"Traceback" not in proto.output
        lines = [line for line in proto.output.decode().splitlines() if "wsgw.service" in line]
        assert len(lines) == 1, proto.output.decode()
        assert lines[0].endswith(f"#critical] cannot listen on 127.0.0.1:{port} (public listener, [server] listen or "
                                 "twistd --listen): Address already in use")


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_an_operator_port_in_use_naming_its_setting() -> None:
    """twistd --admin-listen on a taken port: one line naming the operator listener and its setting, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        admin = taken.getsockname()[1]
        proto, _ = spawn(["--embedded", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                          "--admin-listen", f"tcp:{admin}:interface=127.0.0.1"])
        proto.ended.addTimeout(30, reactor)
        code, _ = await proto.ended
        assert code == 1
        assert b"Traceback" not in proto.output
        assert (f"cannot listen on 127.0.0.1:{admin} (operator listener, [admin] listen or twistd --admin-listen): "
                "Address already in use").encode() in proto.output


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


@pytest_twisted.ensureDeferred
async def test_twistd_at_its_open_files_limit_keeps_the_operator_listener_answering(tmp_path) -> None:
    """With an open-files limit of 400 and max_connections = auto, the public listener takes at most
    400 - 64 - RESERVED_DESCRIPTORS sockets: 450 peers connecting and holding their sockets never exhaust the
    process's descriptors, /metrics and /healthz on the operator listener answer, and the public listener
    serves again once they leave."""
    port, admin = free_port(), free_port()
    config = tmp_path / "wsgw.ini"
    config.write_text(f"[server]\nhandshake_timeout = 60\n[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n")
    proto, transport = spawn(["--config", str(config), "--embedded", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                             open_files=400)
    cap = 400 - 64 - RESERVED_DESCRIPTORS
    peers: list[Raw] = []
    try:
        await proto.logged(b"operator listener")
        assert f"at most {cap} open sockets (auto".encode() in proto.output
        for _ in range(450):
            peers.append(await raw_connect(port))
        await wait_until(lambda: sum(p.open for p in peers) == cap, f"{cap} peers to stay connected", timeout=15)
        samples = await scrape(admin)
        assert value(samples, "wsgw_listener_sockets", listener="public") == cap
        assert value(samples, "wsgw_connections_refused_total", listener="public", limit="total") == 450 - cap
        assert 0 < value(samples, "process_open_fds") < 400 - 64
        assert (await treq.get(f"http://127.0.0.1:{admin}/healthz", timeout=5)).code == 200
        for peer in peers:
            peer.close()
        await wait_until(lambda: not any(p.open for p in peers), "the peers to leave")
        response = await treq.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.code == 200
        await response.content()
        transport.signalProcess("TERM")  # type: ignore[attr-defined]
        proto.ended.addTimeout(TIMEOUT * 3, reactor)
        assert await proto.ended == (0, None)
    finally:
        for peer in peers:
            peer.close()
        if not proto.ended.called:
            os.kill(transport.pid, signal.SIGKILL)  # type: ignore[attr-defined]

