"""What a fresh clone promises, checked on the files (issue 14): the protocol document in the repository covers
the code's close codes and topics; the Python version declared is the one CI runs, and the package keeps off
3.11-only calls; the README's examples say where they work; no phantom make target; the unit tests need no
network. The runs themselves (no Redis, Ctrl-C, make test without apt-get) are in test_suite_preconditions.py."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT_MODULES
from wsgw import frames
from wsgw.config import DEFAULT_TOPICS

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
DECLARED = (3, 11)


def test_the_protocol_document_names_every_close_code_and_topic() -> None:
    """Every close code of wsgw/frames.py is a row of docs/protocol.md §6; every topic of DEFAULT_TOPICS, and its
    default channel, is in §4's table."""
    codes = {value for name, value in vars(frames).items() if name.startswith("CLOSE_")}
    assert codes >= {1000, 4001, 4003}
    close_section = PROTOCOL.split("## 6. Close codes", 1)[1].split("\n## ", 1)[0]
    for code in codes:
        assert re.search(rf"^\| {code} \|", close_section, re.M), f"close code {code} missing from docs/protocol.md §6"
    for topic, channel in DEFAULT_TOPICS.items():
        assert f"| `{topic}` | `{channel}` |" in PROTOCOL, f"topic {topic} missing from docs/protocol.md §4"


def test_the_readme_points_to_the_protocol_document_in_the_repository() -> None:
    assert "[docs/protocol.md](docs/protocol.md)" in README
    assert "shared/spec" not in README and "../shared" not in README


def test_the_declared_python_is_the_one_ci_runs() -> None:
    """setup.cfg, ruff, mypy and the README declare 3.11; the interpreter running the tests (CI's python3,
    .ci/run checks it) satisfies it."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["options"]["python_requires"] == ">=3.11"
    assert setup["mypy"]["python_version"] == "3.11"
    assert 'target-version = "py311"' in (ROOT / "ruff.toml").read_text()
    assert "Python 3.11 or later: CI runs the machine's `python3`, 3.11" in README
    assert "sys.version_info < (3, 11)" in (ROOT / ".ci" / "run").read_text()
    assert sys.version_info >= DECLARED


# Names that exist only from Python 3.11 on; the package keeps off them, so that 3.10 would not fail at a call.
_NEWER = re.compile(r"\bdatetime\.UTC\b|from datetime import [^\n]*\bUTC\b|\btomllib\b|\bExceptionGroup\b|"
                    r"\bTaskGroup\b|\bStrEnum\b|\basyncio\.timeout\(|\bLiteralString\b|\bassert_never\b|"
                    r"\bNotRequired\b|\.add_note\(|from typing import [^\n]*\bSelf\b|\btyping\.Self\b")


@pytest.mark.parametrize("tree", ["wsgw", "twisted", "tests/support"])
def test_no_python_3_11_only_calls(tree: str) -> None:
    """No module uses a 3.11-only name (datetime.UTC, typing.Self, tomllib, exception groups, ...) nor
    ``except*``: JSON logs and chat edits once failed on 3.10 for datetime.UTC."""
    found = []
    for path in sorted((ROOT / tree).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
                  for m in _NEWER.finditer(text)]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: except*" for node in ast.walk(ast.parse(text))
                  if type(node).__name__ == "TryStar"]
    assert not found, found


def test_the_redis_cli_example_says_it_needs_redis_and_gives_wsgw_publish() -> None:
    """The README's `redis-cli PUBLISH` does nothing under `make run` (embedded bus): the text right after it
    says so and gives the command that works in both modes."""
    after = README.split("redis-cli PUBLISH", 1)[1][:900]
    assert "embedded bus" in after and "does nothing" in after
    assert "wsgw-publish --config etc/dev.ini tree -" in after


def test_every_phony_make_target_has_a_recipe() -> None:
    """No phantom target: each .PHONY name has a rule, and `test-unit` runs the unit tests."""
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony is not None
    for target in phony.group(1).split():
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target}: no rule"
    assert re.search(r"^test-unit:.*\n\t\$\(VENV\)/bin/pytest .*-m unit$", makefile, re.M)


_NETWORK_MODULES = ("tests.support.daemon", "tests.support.redis_server", "tests.support.wsclient",
                    "tests.support.twistd", "tests.support.rawtcp", "tests.support.relay", "txredisapi", "treq",
                    "selenium")  # importing wsgw.service or the Redis adapters is fine: unit tests never start them
_NETWORK_CALLS = ("listenTCP", "connectTCP", "serverFromString", "clientFromString", "spawnProcess", "startService")


def _uses(text: str) -> list[str]:
    """The network modules a module's source imports, and the network calls it names."""
    used = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            used += [a.name for a in node.names if a.name.startswith(_NETWORK_MODULES) or a.name == "socket"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(_NETWORK_MODULES):
            used.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr in _NETWORK_CALLS:
            used.append(node.attr)
    return used


@pytest.mark.parametrize("module", sorted(UNIT_MODULES))
def test_unit_modules_use_neither_redis_nor_the_network(module: str) -> None:
    """Each module of UNIT_MODULES (`make test-unit`) exists, imports none of the network support modules or
    adapters and calls no listen, connect or spawn."""
    path = ROOT / "tests" / f"{module}.py"
    assert path.exists(), f"UNIT_MODULES names {module}, which does not exist"
    assert _uses(path.read_text(encoding="utf-8")) == []
