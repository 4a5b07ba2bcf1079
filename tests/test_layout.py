"""The house rules of the layout (DESIGN.md, Shape): the core loads no adapter, and no module grows several owners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import wsgw

CORE = (
    "wsgw.access", "wsgw.frames", "wsgw.pacing", "wsgw.sessions", "wsgw.gateway", "wsgw.dispatch",
    "wsgw.interfaces", "wsgw.events", "wsgw.events.nodes", "wsgw.events.batching", "wsgw.events.tasks",
    "wsgw.events.idm", "wsgw.events.activity", "wsgw.events.endpoint", "wsgw.chat", "wsgw.chat.service",
    "wsgw.chat.requests", "wsgw.chat.presence", "wsgw.chat.actions", "wsgw.chat.membership", "wsgw.chat.sanitize", "wsgw.chat.model", "wsgw.chat.memory_store",
)
ADAPTER_LIBRARIES = ("autobahn", "txredisapi", "jwt", "treq")
PACKAGE = Path(wsgw.__file__).parent
MAX_LINES = 420  # "about 400": a module past it must own one thing only (listed below, with why)
ONE_THING_LONGER = {"wsgw/events/nodes.py": "the node rules of PROTOCOL.md §4.1, one topic"}

_PROBE = f"""
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted(m for m in {ADAPTER_LIBRARIES} if m in sys.modules)))
"""


def test_every_core_module_is_listed() -> None:
    """The probe below covers every module of the core packages (a new core module cannot escape it)."""
    found = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for folder in ("events", "chat") for path in (PACKAGE / folder).glob("*.py")
    }
    assert found - {"wsgw.chat.redis_store"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_importing_a_core_module_loads_no_adapter_library(module: str) -> None:
    """In a fresh interpreter, importing ``module`` leaves autobahn, txredisapi, jwt and treq unloaded."""
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.split() == [], f"{module} loads {out.stdout.strip()}"


def test_no_module_over_about_400_lines_unless_it_owns_one_thing() -> None:
    """Every module of wsgw/ stays under ~400 lines, but the listed ones, each owning one thing."""
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(ONE_THING_LONGER), long
