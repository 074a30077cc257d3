"""Each `server.quiet_star` module imports on its own, first, in a fresh interpreter.

Why: these modules sit below `server.methods`, which imports them; one that imported the
methods back at run time would work only when something imported `server.methods` first
(and fail with "partially initialized module" otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    f"server.quiet_star.{path.stem}"
    for path in (ROOT / "server" / "quiet_star").glob("*.py")
    if path.stem != "__init__"
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
