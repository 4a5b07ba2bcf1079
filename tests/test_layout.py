"""The house rules of the layout (DESIGN.md, Shape): the core loads no adapter, and no module grows several owners."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wsgw

PACKAGE = Path(wsgw.__file__).parent
ROOT = PACKAGE.parent
ADAPTER_LIBRARIES = ("autobahn", "txredisapi", "jwt", "treq")
ADAPTER_MODULES = ("wsgw.web", "wsgw.bus", "wsgw.redis", "wsgw.auth", "wsgw.internals", "wsgw.chat.redis_store",
                   "wsgw.service", "wsgw.tap", "wsgw.publish", "wsgw.revoke", "wsgw.config", "wsgw.devtoken",
                   "wsgw.testing", "wsgw.cli", "wsgw.workers")


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
ONE_THING_LONGER: dict[str, str] = {}  # module -> the one thing it owns, for one over MAX_LINES

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


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, wherever it stands (under TYPE_CHECKING, inside a
    function), relative imports resolved."""
    package = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", CORE)
def test_no_core_module_names_an_adapter_even_for_typing(module: str) -> None:
    """No import statement of a core module, even one under TYPE_CHECKING or inside a function, names an adapter
    library or an adapter module of wsgw: the arrows go from the adapters to the core only."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    bad = sorted(
        name for name in _imports(path)
        if name.split(".")[0] in ADAPTER_LIBRARIES or name.startswith(ADAPTER_MODULES)
    )
    assert bad == [], f"{module} imports {bad}"


def test_no_module_over_about_400_lines_unless_it_owns_one_thing() -> None:
    """Every module of wsgw/ stays under ~400 lines, but the listed ones, each owning one thing."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(ONE_THING_LONGER), long


def test_no_test_module_imports_another() -> None:
    """Test modules share code through conftest.py fixtures, tests/support and wsgw.testing, never each other
    (absolute or relative imports alike)."""
    offenders = {
        path.name: sorted(name for name in _imports(path) if re.search(r"(^|\.)test_\w+", name))
        for path in (ROOT / "tests").glob("test_*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}
