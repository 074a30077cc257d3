"""Where a result was made and from what: every benchmark JSON carries this (``results.py``).

Why each part: a figure is only comparable with another if both ran on the same kind of machine,
code and numbers.

* **CPU**: its model and the instruction-set flags that decide which of vLLM's CPU kernels run
  and whether the gateway picks bfloat16 (:data:`CPU_FLAGS`, present or absent). A bf16 CPU can
  run the same benchmark 1.5x faster, or crash it.
* **Source tree**: the commit, whether the tree was dirty, and if so a SHA-256 of the
  uncommitted changes (``git diff HEAD`` plus the untracked files' contents), so two dirty runs
  can be told apart and a clean re-run can be demanded. Taken once, when the run starts
  (:func:`pin_source`): the result file the run itself rewrites does not count.
* **Sides**: what each server (or in-process model) reported about itself: the dtype its engine
  runs (vLLM's "Initializing a V1 LLM engine ... dtype=..." line, not the flag we passed) and its
  thread binding (vLLM's "OpenMP thread binding info" lines: VLLM_CPU_OMP_THREADS_BIND and the
  core ids), collected for every server the process started (:func:`record_side`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.core.config import RECORDED_CPU_FLAGS

REPO = Path(__file__).resolve().parents[2]

# x86 flags (as /proc/cpuinfo spells them) that change what vLLM's CPU backend runs: native
# bfloat16 dot products and AMX tiles (the gateway's dtype choice and the oneDNN kernels),
# AVX-512 and AVX2 (the kernel families vLLM-CPU dispatches between).
CPU_FLAGS = RECORDED_CPU_FLAGS  # the gateway logs and reports the same ones


# ---- the machine ----------------------------------------------------------------------------


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """{"cpu_model", "cpu_flags": {flag: present}}; flags None where /proc/cpuinfo has none
    (not Linux, or not x86), so "absent" is never claimed without having looked."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return {
        "cpu_model": model or platform.processor() or None,
        "cpu_flags": None if flags is None else {f: f in flags for f in CPU_FLAGS},
    }


# ---- the source tree ------------------------------------------------------------------------


def _git(*args: str) -> bytes | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _excludes(paths: Iterable[Path]) -> list[str]:
    """git pathspecs leaving out ``paths`` (those inside the repository)."""
    out = []
    for path in paths:
        try:
            rel = Path(path).resolve().relative_to(REPO)
        except ValueError:
            continue
        out.append(f":(exclude){rel.as_posix()}")
    return out


def git_state(exclude: Iterable[Path] = ()) -> dict[str, Any]:
    """The commit, the dirty flag and, when dirty, the hash and names of what differs from it.

    Dirty means tracked changes (staged or not) or untracked files that .gitignore does not
    hide; ``exclude`` leaves out what the run writes itself. The hash covers the binary diff
    against HEAD and each untracked file's path and bytes (a symlink: its target), in path order.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    specs = ["--", ".", *_excludes(exclude)]
    diff = _git("diff", "HEAD", "--binary", *specs) or b""
    changed = (_git("diff", "HEAD", "--name-only", "-z", *specs) or b"").split(b"\0")
    untracked = (_git("ls-files", "--others", "--exclude-standard", "-z", *specs) or b"").split(
        b"\0"
    )
    changed, untracked = sorted(filter(None, changed)), sorted(filter(None, untracked))
    dirty = bool(diff or untracked)
    state: dict[str, Any] = {
        "git_commit": commit.decode().strip(),
        "git_dirty": dirty,
        "git_diff_sha256": None,
    }
    if dirty:
        digest = hashlib.sha256(diff)
        for name in untracked:
            path = REPO / os.fsdecode(name)
            digest.update(b"\0untracked\0" + name + b"\0")
            try:
                if path.is_symlink():
                    digest.update(b"symlink\0" + os.fsencode(os.readlink(path)))
                else:
                    digest.update(path.read_bytes())
            except OSError:
                digest.update(b"unreadable")
        state["git_diff_sha256"] = digest.hexdigest()
        names = [os.fsdecode(n) for n in changed] + [
            os.fsdecode(n) + " (untracked)" for n in untracked
        ]
        state["git_dirty_paths"] = names[:50] + (
            [f"... {len(names) - 50} more"] if len(names) > 50 else []
        )
    return state


_PINNED: dict[str, Any] | None = None


def pin_source(*exclude: Path) -> dict[str, Any]:
    """Take the source tree's state now, for every result this process writes from here on:
    the code a run measures is the code it started with."""
    global _PINNED
    _PINNED = git_state(exclude)
    return _PINNED


def source_state(exclude: Iterable[Path] = ()) -> dict[str, Any]:
    """The pinned state, else the state now (without ``exclude``)."""
    return dict(_PINNED) if _PINNED is not None else git_state(exclude)


# ---- what each side reported ----------------------------------------------------------------

_ENGINE_RE = re.compile(
    r"Initializing a V1 LLM engine \(v[^)]*\) with config: model='(?P<model>[^']*)'.*?"
    r"\bdtype=(?:torch\.)?(?P<dtype>\w+)"
)
_BIND_RE = re.compile(r"VLLM_CPU_OMP_THREADS_BIND=(?P<q>['\"])(?P<bind>.*?)(?P=q)")
_CORES_RE = re.compile(r"local_rank=0, core ids=\[(?P<ids>[^\]]*)\]")


def _model_label(model: str) -> str:
    """A local folder by its name (the machine's paths say nothing), a hub id as is."""
    return Path(model).name if model.startswith(("/", "~", ".")) else model


def engine_report(log: str) -> dict[str, Any]:
    """What a server's log says its vLLM engines run: {"dtype": {model: dtype}, and on CPU
    "omp_threads_bind" and "core_ids"}. The last line per model wins (a start-up probe that
    logs first is superseded by the engine that serves)."""
    dtypes = {_model_label(m["model"]): m["dtype"] for m in _ENGINE_RE.finditer(log)}
    report: dict[str, Any] = {"dtype": dtypes}
    binds = _BIND_RE.findall(log)
    if binds:
        report["omp_threads_bind"] = binds[-1][1]
    cores = _CORES_RE.findall(log)
    if cores:
        report["core_ids"] = [int(c) for c in cores[-1].split(",") if c.strip()]
    return report


_SIDES: dict[str, list[dict[str, Any]]] = {}


def record_side(kind: str, report: dict[str, Any], starts: int = 1) -> None:
    """Remember what one side (a started server, an in-process model) reported; identical
    reports of one kind are counted, not repeated."""
    entries = _SIDES.setdefault(kind, [])
    for entry in entries:
        if {k: v for k, v in entry.items() if k != "starts"} == report:
            entry["starts"] += starts
            return
    entries.append({**report, "starts": starts})


def record_hf_side(model: Any, threads: int, kind: str = "hf") -> None:
    """An in-process transformers model as a side: the dtype its weights are in, torch's
    thread count (what binds its compute; no OpenMP core list is set)."""
    dtype = str(getattr(model, "dtype", None)).removeprefix("torch.")
    record_side(
        kind, {"dtype": {_model_label(str(model.name_or_path)): dtype}, "torch_threads": threads}
    )


def adopt_sides(result: dict[str, Any]) -> None:
    """Take over the sides a child benchmark's result reports (a side run in a subprocess)."""
    for kind, entries in ((result.get("provenance") or {}).get("sides") or {}).items():
        for entry in entries:
            report = {k: v for k, v in entry.items() if k != "starts"}
            record_side(kind, report, entry.get("starts", 1))


_ACCOUNTING: list[dict[str, Any]] = []


def measuring() -> bool:
    """True inside a benchmark run (its tree is pinned), where servers record their windows."""
    return _PINNED is not None


def record_accounting(kind: str, result: dict[str, Any]) -> None:
    """One server lifetime's accounting window (loadtest/harness/accounting.py)."""
    _ACCOUNTING.append({"kind": kind, **result})


def accounting_summary() -> dict[str, Any]:
    """Every server window of the run: how many were checked and which did not add up."""
    checked = [a for a in _ACCOUNTING if a.get("matches") is not None]
    return {
        "windows": len(_ACCOUNTING),
        "checked": len(checked),
        "mismatches": [a for a in checked if not a["matches"]],
        "unchecked": sorted({a.get("note", "") for a in _ACCOUNTING if a.get("matches") is None}),
    }


def sides() -> dict[str, list[dict[str, Any]]]:
    return {kind: [dict(e) for e in entries] for kind, entries in _SIDES.items()}


def reset() -> None:
    """Forget the pinned tree and the sides (tests; one process, one run otherwise)."""
    global _PINNED
    _PINNED = None
    _SIDES.clear()
    _ACCOUNTING.clear()
