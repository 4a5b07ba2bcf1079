"""The twistd plugin: found by twistd, lists its options, refuses bad configuration."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.plugin import getPlugins
from twisted.python import usage

from tests.support.daemon import SECRET
from wsgw.config import config_from_string
from wsgw.service import GatewayService, ListenFailed
from wsgw.tap import Options

ROOT = Path(__file__).resolve().parent.parent


def test_twistd_finds_the_plugin() -> None:
    """getPlugins(IServiceMaker) finds the wsgw dropin, as twistd does."""
    names = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "wsgw" in names
    assert names["wsgw"].module == "wsgw.tap"


def test_twistd_help_lists_the_options() -> None:
    """`twistd -n wsgw --help` runs and lists the gateway's options."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    out = subprocess.run([twistd, "-n", "wsgw", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for option in ("--config", "--listen", "--redis", "--embedded"):
        assert option in out.stdout


def test_options_refuse_bad_config(tmp_path) -> None:
    """A config error surfaces as a usage error naming the key and file, so twistd refuses to start."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[server]\nnope = 1\n")
    with pytest.raises(usage.UsageError, match=r"bad.ini: unknown key \[server\] nope"):
        Options().parseOptions(["--config", str(bad)])


def test_options_override_listen_and_redis(monkeypatch) -> None:
    """--listen (repeatable) and --redis override the file; --embedded forces the embedded bus."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", "x")
    opts = Options()
    opts.parseOptions(["--listen", "tcp:1", "-l", "tcp:2", "--redis", "tcp:127.0.0.1:6379"])
    assert opts["wsgw_config"].listen == ("tcp:1", "tcp:2")
    assert opts["wsgw_config"].redis == "tcp:127.0.0.1:6379"
    opts = Options()
    opts.parseOptions(["--redis", "tcp:127.0.0.1:6379", "--embedded"])
    assert opts["wsgw_config"].redis == ""


def test_options_admin_listen_overrides_the_operator_listener(monkeypatch) -> None:
    """--admin-listen replaces [admin] listen (`make run ADMIN_PORT=...`); an empty one turns it off."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", "x")
    opts = Options()
    opts.parseOptions(["--admin-listen", "tcp:6002:interface=127.0.0.1"])
    assert opts["wsgw_config"].admin_listen == ("tcp:6002:interface=127.0.0.1",)
    opts = Options()
    opts.parseOptions(["--admin-listen", ""])
    assert opts["wsgw_config"].admin_listen == ()


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_is_one_line_naming_the_address_and_its_setting() -> None:
    """GatewayService.startService on a bound port raises ListenFailed: address, listener, setting, reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = config_from_string(f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n[admin]\nlisten =\n",
                                    "<test>", environ={"WSGW_HMAC_SECRET": SECRET})
        service = GatewayService(config, reactor)
        try:
            with pytest.raises(ListenFailed) as failed:
                service.startService()
        finally:
            await service.stopService()
    assert str(failed.value) == (f"cannot listen on 127.0.0.1:{port} (public listener, [server] listen or twistd "
                                 "--listen): Address already in use")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_takes_port_and_admin_port() -> None:
    """`make run PORT=6001 ADMIN_PORT=6002` listens on those ports, prints addresses and a publish command for
    them, and after a failed start says which variables choose other ports."""
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "run", "PORT=6001", "ADMIN_PORT=6002"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "--listen tcp:6001:interface=127.0.0.1 --listen 'tcp6:6001:interface=\\:\\:1'" in dry.stdout
    assert "--admin-listen tcp:6002:interface=127.0.0.1" in dry.stdout
    assert "ws://127.0.0.1:6001/ws" in dry.stdout and "http://127.0.0.1:6002/metrics" in dry.stdout
    assert "wsgw-publish --config etc/dev.ini --admin-listen tcp:6002:interface=127.0.0.1 tree -" in dry.stdout
    assert "make run PORT=... ADMIN_PORT=..." in dry.stdout
