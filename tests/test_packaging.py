"""The package as users get it (issue 14, Packaging): licence, version, the files a wheel carries, and a wheel
installed in a fresh venv (.ci/wheel-check) that `twistd wsgw` finds and a non-root start uses without error."""

from __future__ import annotations

import ast
import configparser
import hashlib
import importlib.metadata
import os
import re
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

import wsgw
from wsgw.cli import main

ROOT = Path(__file__).parent.parent
# md5 of the FSF's https://www.gnu.org/licenses/agpl-3.0.txt (what license checkers such as Yocto's
# LIC_FILES_CHKSUM record for AGPL-3.0 LICENSE files).
AGPL_3_MD5 = "4ae09d45eac4aa08d013b5f2e01c67f6"
# README "systemd": run after every pip install into the service's venv (twistd cannot write it as wsgw).
PLUGIN_CACHE = 'python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"'


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg")
    return parser


def test_license_is_the_agpl_3_text_the_metadata_names() -> None:
    """LICENSE is the official GNU AGPL v3 text, byte for byte; the metadata says AGPL-3.0-or-later and ships it."""
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == AGPL_3_MD5
    metadata = setup_cfg()["metadata"]
    assert metadata["license"] == "AGPL-3.0-or-later"
    assert metadata["license_files"] == "LICENSE"


def test_version_has_one_source_the_package_metadata() -> None:
    """wsgw.__version__ and `wsgw version` are the installed metadata's version, which is setup.cfg's; no other
    file of the package writes a version."""
    expected = setup_cfg()["metadata"]["version"]
    assert importlib.metadata.version("wsgw") == expected
    assert wsgw.__version__ == expected
    assert expected not in (ROOT / "wsgw" / "__init__.py").read_text()


def test_sample_unit_prints_the_packaged_unit(capsys) -> None:
    """`wsgw sample-unit` prints etc/wsgw.service from the package data (wsgw/wsgw.service,
    a copy: edit etc/wsgw.service, then `cp etc/wsgw.service wsgw/wsgw.service`)."""
    unit = (ROOT / "etc" / "wsgw.service").read_text()
    assert (ROOT / "wsgw" / "wsgw.service").read_text() == unit, "cp etc/wsgw.service wsgw/wsgw.service"
    assert main(["sample-unit"]) == 0
    assert capsys.readouterr().out == unit
    package_data = setup_cfg()["options.package_data"]
    assert "wsgw.service" in package_data["wsgw"] and "plugins/wsgw_plugin.py" in package_data["twisted"]


def test_readme_install_steps_give_the_units_documentation_and_plugin_cache() -> None:
    """The unit's Documentation= is the README the package installs into the venv that README "systemd" creates,
    and those steps generate the plugin cache after the install."""
    readme = (ROOT / "README.md").read_text()
    steps = readme[readme.index("### systemd"):]
    steps = steps[:steps.index("```", steps.index("```") + 3)]
    assert "python3 -m venv /opt/wsgw/.venv" in steps
    assert "/opt/wsgw/.venv/bin/" + PLUGIN_CACHE in steps
    assert steps.index("/bin/pip install") < steps.index("getPlugins")
    assert "wsgw sample-unit" in steps
    data_files = setup_cfg()["options.data_files"]["share/doc/wsgw"].split()
    assert data_files == ["README.md", "LICENSE"]
    unit = (ROOT / "etc" / "wsgw.service").read_text()
    assert "Documentation=file:///opt/wsgw/.venv/share/doc/wsgw/README.md\n" in unit


def test_a_wheel_installs_in_a_fresh_venv_and_runs_as_an_unprivileged_user() -> None:
    """.ci/wheel-check: build the wheel, install it with its dependencies into a fresh venv, generate the plugin
    cache, then from that venv `twistd wsgw --help`, `wsgw version`, the samples, the docs, and a start as nobody
    that logs no plugin-cache error. Skipped without the package index (the dependencies come from it), and when
    .ci/run has just run the same script (WSGW_WHEEL_CHECKED=1)."""
    if os.environ.get("WSGW_WHEEL_CHECKED") == "1":
        pytest.skip(".ci/run ran .ci/wheel-check before the suite")
    if os.geteuid() != 0:
        pytest.skip("the unprivileged start needs root to switch to nobody (setpriv)")
    # in a session of its own: whatever it started and left running (reparented to init) keeps that session id
    check = subprocess.Popen(["bash", str(ROOT / ".ci" / "wheel-check")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = check.communicate(timeout=300)
    finally:
        check.kill()
    left = _session_members(check.pid)
    for pid in left:  # not left for every later run to find (stopped by their pids)
        os.kill(pid, signal.SIGKILL)
    if check.returncode == 77 and not os.environ.get("CI"):
        pytest.skip(stdout.strip())
    assert check.returncode == 0, stdout + stderr
    assert not left, f"wheel-check left processes running: {left}"


def _session_members(sid: int) -> list[int]:
    """The pids of the processes of session ``sid`` (/proc/PID/stat field 6)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def test_every_package_of_wsgw_is_installed() -> None:
    """setup.cfg lists every package under wsgw/ (a directory with an __init__.py), so a wheel holds all the code
    the checkout runs (a new package is easy to forget)."""
    listed = set(setup_cfg()["options"]["packages"].split())
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "wsgw").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_the_bases_of_compiled_classes_are_in_the_build_requirements() -> None:
    """mypyc compiles a class whose base comes from a library missing from the build environment (its type then
    Any, setup.cfg ignore_missing_imports) into a broken native class: ``PreparedHMAC(HMACAlgorithm)`` built by
    ``pip install`` into a fresh venv (README "systemd", PyJWT not yet installed) made every start of the daemon
    end in a segmentation fault or ``SystemError: Objects/dictobject.c: bad argument to internal function``. So
    every base a compiled module (setup.py COMPILED) imports from another distribution is a build requirement
    (pyproject.toml [build-system] requires), whatever the build machine has installed."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    compiled = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", None) == "COMPILED")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    required = {_normalized(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requires}
    distributions = importlib.metadata.packages_distributions()
    needed: dict[str, str] = {}
    for path in ast.literal_eval(compiled):
        module = ast.parse((ROOT / path).read_text())
        imported = {alias.asname or alias.name: node.module or "" for node in ast.walk(module)
                    if isinstance(node, ast.ImportFrom) for alias in node.names}
        imported.update({(alias.asname or alias.name).split(".")[0]: alias.name for node in ast.walk(module)
                         if isinstance(node, ast.Import) for alias in node.names})
        for cls in (node for node in ast.walk(module) if isinstance(node, ast.ClassDef)):
            for base in cls.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                top = imported.get(getattr(root, "id", ""), "").split(".")[0]
                for dist in distributions.get(top, []) if top not in ("", "wsgw") else []:
                    needed[f"{path}: {cls.name}({ast.unparse(base)})"] = _normalized(dist)
    assert needed, "no compiled class has a base from another distribution: is this test still reading them?"
    assert {where: dist for where, dist in needed.items() if dist not in required} == {}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
