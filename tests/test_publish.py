"""``wsgw-publish``: the same settings as the daemon, through Redis or through the operator listener's /publish."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.daemon import SECRET, Daemon, StartGateway, channels, new_prefix, token, workspace
from tests.support.redis_server import RedisServer, shared_endpoint
from tests.support.wsclient import connect
from wsgw.publish import PublishError, client_endpoint, load_config, main, publish

HOME = workspace("w-home", "home", "ds/home")
EVENT = {"Target": {"Uuid": "n1", "Path": "ds/home/report.pdf"}}
PUBLISH = os.path.join(os.path.dirname(sys.executable), "wsgw-publish")


def ini(tmp_path: Path, prefix: str, server: str = "", admin: str = "") -> str:
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    path = tmp_path / "wsgw.ini"
    # the daemon's own auth keys are left in: wsgw-publish must not need them
    path.write_text(f"[server]\n{server}\n[auth]\nhmac_secret_file = /nonexistent/secret\n[admin]\n{admin}\n"
                    f"[topics]\n{topics}\n")
    return str(path)


async def admin_daemon(gateway: StartGateway, tmp_path: Path) -> tuple[Daemon, str]:
    """An embedded-bus daemon with an operator listener and a publish token; returns it and a config for it."""
    secret = tmp_path / "publish.token"
    secret.write_text("publish-token-0123456789\n")
    daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                           overrides={"admin.publish_token_file": str(secret)})
    config = ini(tmp_path, daemon.prefix, admin=f"listen = tcp:{daemon.admin_port}:interface=127.0.0.1\n"
                                                f"publish_token_file = {secret}")
    return daemon, config


@pytest_twisted.ensureDeferred
async def test_publish_through_redis_reaches_a_subscriber(tmp_path: Path, gateway: StartGateway) -> None:
    """With a Redis in the config the event is PUBLISHed on the topic's channel and a subscribed client gets it."""
    daemon = await gateway()
    prefix = daemon.prefix
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    config = load_config(ini(tmp_path, prefix, server=f"redis = {shared_endpoint()}"))
    report = await publish(reactor, config, "tree", json.dumps(EVENT).encode())
    assert f"on {prefix}.topic.pydio.tree.nodes.changes (1 subscribed gateways)" in report
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"


@pytest_twisted.ensureDeferred
async def test_publish_without_redis_goes_through_the_operator_listener(tmp_path: Path,
                                                                        gateway: StartGateway) -> None:
    """On the embedded bus the event goes through POST /publish with the token file's token."""
    daemon, config_path = await admin_daemon(gateway, tmp_path)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    report = await publish(reactor, load_config(config_path), "tree", json.dumps(EVENT).encode())
    assert report.startswith(f"published {len(json.dumps(EVENT))} bytes on topic tree through tcp:")
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"


@pytest_twisted.ensureDeferred
async def test_admin_listen_overrides_the_config_as_make_run_admin_port_does(tmp_path: Path,
                                                                             gateway: StartGateway) -> None:
    """``--admin-listen`` (load_config's admin_listen) replaces the config's [admin] listen: `make run
    ADMIN_PORT=...` passes the same endpoint to twistd and to the wsgw-publish command it prints."""
    daemon, config_path = await admin_daemon(gateway, tmp_path)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    Path(config_path).write_text(Path(config_path).read_text().replace(f"tcp:{daemon.admin_port}:", "tcp:1:"))
    config = load_config(config_path, admin_listen=f"tcp:{daemon.admin_port}:interface=127.0.0.1")
    assert config.admin_listen == (f"tcp:{daemon.admin_port}:interface=127.0.0.1",)
    await publish(reactor, config, "tree", json.dumps(EVENT).encode())
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"


@pytest_twisted.ensureDeferred
async def test_publish_reports_the_gateway_refusal(tmp_path: Path, gateway: StartGateway) -> None:
    """A wrong token or an event the topic refuses comes back as a PublishError with the gateway's reason."""
    _, config_path = await admin_daemon(gateway, tmp_path)
    config = load_config(config_path)
    with pytest.raises(PublishError, match="answered 400: not a tree event"):
        await publish(reactor, config, "tree", b'{"Type":"NOPE","Target":{"Uuid":"x"}}')
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token")
    text = Path(config_path).read_text().replace(str(tmp_path / "publish.token"), str(wrong))
    Path(config_path).write_text(text)
    with pytest.raises(PublishError, match="answered 401"):
        await publish(reactor, load_config(config_path), "tree", json.dumps(EVENT).encode())


class Process(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self._stdin = stdin
        self.out = b""
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_console_script_publishes_from_stdin(tmp_path: Path, gateway: StartGateway) -> None:
    """``wsgw-publish --config x.ini tree -`` reads the event from standard input, publishes it and exits 0."""
    daemon, config_path = await admin_daemon(gateway, tmp_path)
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [HOME]))
    proc = Process(json.dumps(EVENT).encode())
    reactor.spawnProcess(proc, PUBLISH, [PUBLISH, "--config", config_path, "tree", "-"],
                         env={**os.environ, "WSGW_HMAC_SECRET": SECRET})
    proc.ended.addTimeout(30, reactor)
    assert await proc.ended == 0, proc.out
    assert f"published {len(json.dumps(EVENT))} bytes on topic tree".encode() in proc.out
    assert b"publish-token" not in proc.out
    assert (await alice.next())["Target"]["Path"] == "home/report.pdf"


def test_bad_input_is_refused_before_anything_is_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not JSON, not an object, an unknown topic, a missing file or a bad config: exit 2 with a clear message."""
    config = ini(tmp_path, new_prefix())
    bad = tmp_path / "bad.json"
    for content, topic, message in ((b"{nope", "tree", "not JSON"), (b"[1]", "tree", "must be a JSON object"),
                                    (b"{}", "nodes", "unknown topic 'nodes'")):
        bad.write_bytes(content)
        assert main(["--config", config, topic, str(bad)]) == 2
        assert message in capsys.readouterr().err
    assert main(["--config", config, "tree", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "typo.ini").write_text("[server]\nrediss = x\n")
    assert main(["--config", str(tmp_path / "typo.ini"), "tree", str(bad)]) == 2
    assert "unknown key [server] rediss" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_nothing_to_publish_to_is_a_clear_error(tmp_path: Path) -> None:
    """Without Redis and without an operator listener (or its token) there is nowhere to publish: say so."""
    prefix = new_prefix()
    with pytest.raises(PublishError, match="no \\[server\\] redis and no \\[admin\\] listen"):
        await publish(reactor, load_config(ini(tmp_path, prefix, admin="listen =")), "tree", b"{}")
    with pytest.raises(PublishError, match="needs \\[admin\\] publish_token_file"):
        await publish(reactor, load_config(ini(tmp_path, prefix)), "tree", b"{}")


@pytest_twisted.ensureDeferred
async def test_a_redis_that_stops_answering_is_a_clear_error() -> None:
    """A Redis that connects, then answers nothing (stalled): one PublishError line, not a traceback."""
    with RedisServer() as server:
        config = load_config(None, server.endpoint)
        await publish(reactor, config, "tree", b"{}", timeout=5)  # up and answering
        server.freeze()
        try:
            with pytest.raises(PublishError, match="did not"):
                await publish(reactor, config, "tree", b"{}", timeout=0.5)
        finally:
            server.thaw()


def test_client_endpoint_for_the_operator_listener() -> None:
    """Server endpoint strings become the client endpoint that reaches them (wildcards mean loopback)."""
    assert client_endpoint("tcp:5051:interface=127.0.0.1") == ("tcp:host=127.0.0.1:port=5051:timeout=10",
                                                               "127.0.0.1:5051")
    assert client_endpoint("tcp:port=6000") == ("tcp:host=127.0.0.1:port=6000:timeout=10", "127.0.0.1:6000")
    assert client_endpoint("tcp6:5051:interface=\\:\\:1") == ("tcp6:host=\\:\\:1:port=5051:timeout=10",
                                                              "[::1]:5051")
    assert client_endpoint("unix:/run/wsgw/admin.sock:mode=600") == ("unix:path=/run/wsgw/admin.sock:timeout=10",
                                                                     "localhost")
    with pytest.raises(PublishError, match="kind 'ssl'"):
        client_endpoint("ssl:5051:privateKey=k.pem")


def test_the_control_topic_is_not_for_wsgw_publish() -> None:
    """The control topic carries the gateway's own signed operator messages (PROTOCOL.md §3.1), not events."""
    from wsgw.config import config_from_string
    from wsgw.publish import PublishError, check_event

    config = config_from_string("", "<test>", environ={"WSGW_HMAC_SECRET": "s" * 32})
    with pytest.raises(PublishError, match="unknown topic 'control'"):
        check_event("control", b"{}", config)
