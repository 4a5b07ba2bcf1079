"""``wsgw-disconnect`` and ``wsgw-revoke``: the daemon's config, the operator listener's /disconnect and /revoke."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.daemon import SECRET, Daemon, StartGateway, channels, new_prefix
from tests.support.redis_server import shared_endpoint
from tests.support.wsclient import Client, connect
from wsgw.publish import load_config
from wsgw.revoke import OperatorError, disconnect_main, operator_request, revoke_main

BIN = os.path.dirname(sys.executable)
OPERATOR_TOKEN = "operator-token-of-the-cli-tests-0123"


def tok(login: str, iat: float, jti: str = "j") -> str:
    return jwt.encode({"name": login, "sub": f"u-{login}", "iat": iat, "exp": int(iat + 3600), "jti": jti}, SECRET,
                      algorithm="HS256")


def ini(tmp_path: Path, prefix: str, admin: str) -> str:
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    path = tmp_path / "wsgw.ini"
    path.write_text(f"[server]\nredis = {shared_endpoint()}\n[auth]\nhmac_secret_file = /nonexistent/secret\n"
                    f"[admin]\n{admin}\n[topics]\n{topics}\n")
    return str(path)


async def operator_daemon(gateway: StartGateway, tmp_path: Path) -> tuple[Daemon, str]:
    """A daemon on Redis with an operator listener and token; returns it and a config file naming both."""
    secret = tmp_path / "operator.token"
    secret.write_text(OPERATOR_TOKEN + "\n")
    daemon = await gateway(admin="tcp:0:interface=127.0.0.1", overrides={"admin.publish_token_file": str(secret)})
    return daemon, ini(tmp_path, daemon.prefix, f"listen = tcp:{daemon.admin_port}:interface=127.0.0.1\n"
                                                f"publish_token_file = {secret}")


class Process(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[int] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: object) -> None:
        self.ended.callback(reason.value.exitCode)  # type: ignore[attr-defined]


async def run(script: str, *args: str) -> tuple[int, bytes]:
    proc = Process()
    path = os.path.join(BIN, script)
    reactor.spawnProcess(proc, path, [path, *args], env={**os.environ})
    proc.ended.addTimeout(30, reactor)
    return await proc.ended, proc.out


async def subscribed(daemon: Daemon, token: str) -> Client:
    client = await connect(daemon.port)
    assert (await client.subscribe(token))["@type"] == "subscribed"
    return client


@pytest_twisted.ensureDeferred
async def test_console_scripts_disconnect_and_revoke(gateway: StartGateway, tmp_path: Path) -> None:
    """``wsgw-disconnect --login`` closes the user's sockets; ``wsgw-revoke --login --before`` refuses the tokens
    issued before; both exit 0 with one line, never printing the token."""
    daemon, config = await operator_daemon(gateway, tmp_path)
    now = time.time()
    alice = await subscribed(daemon, tok("alice", now - 100))
    code, out = await run("wsgw-disconnect", "--config", config, "--login", "alice", "--reason", "maintenance")
    assert code == 0, out
    assert b"disconnect of login alice accepted by tcp:" in out and OPERATOR_TOKEN.encode() not in out
    assert await alice.next() == {"@type": "error", "error": "access revoked: maintenance"}
    assert (await alice.wait_closed())[0] == 4003
    alice = await subscribed(daemon, tok("alice", now - 100))
    code, out = await run("wsgw-revoke", "--config", config, "--login", "alice", "--before", str(now - 50))
    assert code == 0, out
    assert (await alice.wait_closed()) == (4003, "access revoked: token revoked")
    await subscribed(daemon, tok("alice", now - 10))


@pytest_twisted.ensureDeferred
async def test_a_refusal_or_no_listener_is_a_clear_error(gateway: StartGateway, tmp_path: Path) -> None:
    """The gateway's 400 and 401 come back with its reason; no operator listener, or one not answering, says so."""
    daemon, config_path = await operator_daemon(gateway, tmp_path)
    config = load_config(config_path)
    with pytest.raises(OperatorError, match="answered 400: before must be a finite number"):
        await operator_request(reactor, config, "revoke", {"login": "a", "before": float("nan")})
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token")
    Path(config_path).write_text(Path(config_path).read_text().replace(str(tmp_path / "operator.token"), str(wrong)))
    with pytest.raises(OperatorError, match="answered 401"):
        await operator_request(reactor, load_config(config_path), "disconnect", {"login": "a"})
    without = load_config(ini(tmp_path, new_prefix(), "listen ="))
    with pytest.raises(OperatorError, match="no \\[admin\\] listen"):
        await operator_request(reactor, without, "revoke", {"login": "a"})
    await daemon.stop()
    with pytest.raises(OperatorError, match="did not answer"):
        await operator_request(reactor, config, "revoke", {"login": "a"})


def test_bad_command_lines_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option, nobody named, or a bad config file: exit 2 with a message, nothing sent."""
    with pytest.raises(SystemExit) as exited:
        revoke_main(["--reason", "x"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        disconnect_main([])
    assert exited.value.code == 2 and "name someone: --login or --sub" in capsys.readouterr().err
    (tmp_path / "typo.ini").write_text("[server]\nrediss = x\n")
    assert revoke_main(["--config", str(tmp_path / "typo.ini"), "--login", "a"]) == 2
    assert "wsgw-revoke: " in capsys.readouterr().err
