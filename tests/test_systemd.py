"""etc/wsgw.service: what the unit promises operators, and systemd-analyze verify where it exists."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "etc" / "wsgw.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_twistd_in_the_foreground_and_stops_it_gracefully() -> None:
    """The unit runs twistd --nodaemon without a pidfile, stops it with SIGTERM with more time than the default
    shutdown_timeout, restarts it on failure, raises the open-files limit, and reloads it with SIGHUP."""
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert "twistd --nodaemon --pidfile= wsgw --config /etc/wsgw/wsgw.ini" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 10  # [server] shutdown_timeout defaults to 10 s
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 20000
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the config (tests/test_reload.py)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (ExecStart pointed at this checkout's twistd, which it must find)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze on this machine (package systemd)")
    twistd = Path(sys.executable).parent / "twistd"
    copy = tmp_path / "wsgw.service"
    copy.write_text(UNIT.read_text().replace("/opt/wsgw/.venv/bin/twistd", str(twistd)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
