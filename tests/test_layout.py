"""The house rules of the layout (DESIGN.md, Shape): the core loads no adapter, and no module grows several owners."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import wsgw

PACKAGE = Path(wsgw.__file__).parent
ROOT = PACKAGE.parent
ADAPTER_LIBRARIES = ("autobahn", "txredisapi", "jwt", "treq")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _core() -> list[str]:
    """The core's modules, from the Makefile's CORE list (the one `make lint` type-checks strictly)."""
    found = re.search(r"^CORE := (.*?[^\\])$", (ROOT / "Makefile").read_text(), re.MULTILINE | re.DOTALL)
    assert found, "the Makefile has no CORE list"
    modules: list[str] = []
    for entry in found.group(1).replace("\\\n", " ").split():
        path = ROOT / entry
        modules += sorted(_module(p) for p in path.glob("*.py")) if path.is_dir() else [_module(path)]
    return modules


CORE = _core()
MAX_LINES = 420  # "about 400": a module past it must own one thing only (listed below, with why)
ONE_THING_LONGER = {"wsgw/events/nodes.py": "the node rules of PROTOCOL.md §4.1, one topic"}

_PROBE = f"""
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted(m for m in {ADAPTER_LIBRARIES} if m in sys.modules)))
"""


def test_every_module_of_the_core_packages_is_core() -> None:
    """Every module of events/ and chat/ is in the core list, but the one adapter (chat/redis_store), so a new
    module cannot escape the probe below or strict typing."""
    found = {_module(path) for folder in ("events", "chat") for path in (PACKAGE / folder).glob("*.py")}
    assert found - {"wsgw.chat.redis_store"} <= set(CORE)
    assert "wsgw.gateway" in CORE and "wsgw.sessions" in CORE


@pytest.mark.parametrize("module", CORE)
def test_importing_a_core_module_loads_no_adapter_library(module: str) -> None:
    """In a fresh interpreter, importing ``module`` leaves autobahn, txredisapi, jwt and treq unloaded."""
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.split() == [], f"{module} loads {out.stdout.strip()}"


def test_no_module_over_about_400_lines_unless_it_owns_one_thing() -> None:
    """Every module of wsgw/ stays under ~400 lines, but the listed ones, each owning one thing."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(ONE_THING_LONGER), long


def test_no_test_module_imports_another() -> None:
    """Test modules share code through conftest.py fixtures, tests/support and wsgw.testing, never each other."""
    offenders = [
        path.name for path in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^\s*(from tests\.test_|import tests\.test_|from tests import test_)", path.read_text(),
                     re.MULTILINE)
    ]
    assert offenders == []
