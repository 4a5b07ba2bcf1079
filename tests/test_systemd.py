"""etc/wsgw.service: what the unit promises operators, and systemd-analyze verify where it exists."""

from __future__ import annotations

import configparser
import re
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


# The sandbox of etc/wsgw.service (issue 14: `systemd-analyze security` rated the unit 7.7 EXPOSED; at most 3).
HARDENING = {
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
    "LockPersonality": "yes", "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes", "UMask": "0077", "ProtectProc": "invisible",
}


def unit_lines() -> list[tuple[str, str]]:
    """Every ``Key=value`` line of the unit, in order (a key such as SystemCallFilter= may repeat)."""
    lines = [line.strip() for line in UNIT.read_text().splitlines()]
    return [(k, v) for k, _, v in (line.partition("=") for line in lines if "=" in line and line[0] != "#")]


def test_unit_is_sandboxed_and_each_option_says_what_it_costs() -> None:
    """The unit sets every sandboxing option above, runs as the unprivileged user wsgw, filters system calls
    to a service's set less the privileged ones, and each sandbox line is preceded by a comment saying its cost."""
    settings = dict(unit_lines())
    for key, value in HARDENING.items():
        assert settings.get(key) == value, f"{key}={value} expected in etc/wsgw.service"
    assert settings["User"] == "wsgw"
    # pyOpenSSL's cffi callbacks need writable and executable memory: TLS would fail (the unit says so).
    assert settings.get("MemoryDenyWriteExecute", "no") == "no"
    filters = [v for k, v in unit_lines() if k == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged @resources"]
    comment, previous = "", ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("#"):
            comment = comment + line if previous.startswith("#") else line
        elif line.partition("=")[0] in HARDENING or line.startswith("SystemCall"):
            assert "Cost:" in comment, f"no comment saying what {line} costs"
        else:
            comment = ""
        previous = line


def test_systemd_analyze_security_rates_the_unit_at_most_3() -> None:
    """`systemd-analyze security --offline=yes` (systemd 250 and later) rates the unit's exposure at most 3.0."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze on this machine (package systemd)")
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline (systemd 250 or later): {result.stderr}")
    match = re.search(r"Overall exposure level for wsgw\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0, result.stdout


def test_readme_socket_figure_agrees_with_limit_nofile() -> None:
    """README's sockets-per-process figure is what [server] max_connections = auto gives under the unit's
    LimitNOFILE: the open-files limit minus [admin] max_connections (64) minus 192 (wsgw/web/listener.py)."""
    limit = int(dict(unit_lines())["LimitNOFILE"])
    readme = (UNIT.parent.parent / "README.md").read_text()
    expected = f"{limit - 64 - 192:,}"
    assert f"One process accepts up to {expected} sockets" in readme, expected
    assert f"LimitNOFILE={limit}" in readme


def test_unit_lets_the_supervisor_of_workers_stop_them_itself() -> None:
    """With [server] workers > 1, SIGTERM reaches twistd only (KillMode=mixed), which stops its workers in order
    (README "Workers"); their private sockets go to the unit's own RuntimeDirectory."""
    service = unit()["Service"]
    assert service["KillMode"] == "mixed"
    assert service["RuntimeDirectory"] == "wsgw" and service["RuntimeDirectoryMode"] == "0700"
