"""The twistd plugin: found by twistd, lists its options, refuses bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from wsgw.tap import Options


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
