"""`python -m loadtest docs [--check]`: the tables in docs/*.md, regenerated from committed data.

Why: every figure in the docs must be recomputable from raw data in the repository. A table
sits between ``<!-- generated:NAME -->`` and ``<!-- end -->``; this command rewrites each block
from its source (a benchmark's JSON under docs/data/, or the replay's records under
docs/results/), and ``--check`` fails when a doc differs from what it would write (a unit test
runs the check). A benchmark whose JSON is not committed yet gets a "re-measurement pending"
line with the exact command instead of numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.harness.accounting import REMOTE_NOTE

REPO = Path(__file__).resolve().parent.parent
DOCS = ("docs/benchmarks.md", "docs/results.md", "docs/scaling.md")
# Prose docs: no tables of their own today, but a measured figure in them must come from a
# generated block too (tests/unit/test_docs_generated.py checks both lists).
PROSE_DOCS = ("README.md", "docs/quiet_star.md", "docs/loadtest.md", "docs/architecture.md")
BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[\w.+-]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.S)
RECORDS = "docs/results/records.jsonl"
RESULTS_SUMMARY = "docs/results/summary.json"


@dataclass(frozen=True)
class Source:
    """A benchmark's result file, its table function, and the command that makes the file."""

    data: str  # relative to the repository
    module: str  # has ``tables(payload) -> {name: markdown}``
    command: str


def _bench(name: str, module: str, args: str) -> Source:
    out = f"docs/data/{name}.json"
    return Source(out, module, f"python -m loadtest.benchmarks.{module} {args}--out {out}")


SOURCES: dict[str, Source] = {
    "gateway_overhead": _bench("gateway_overhead", "gateway_overhead", ""),
    "rebase_throughput": _bench("rebase_throughput", "rebase_bench", "throughput --best-of-n "),
    "rebase_hf": _bench("rebase_hf", "rebase_bench", "hf --questions 2 "),
    # The scheduler under a load where it matters: width x trees >> max_num_seqs.
    "rebase_scheduler": _bench(
        "rebase_scheduler",
        "rebase_bench",
        "throughput --configs priority16,direct16,fair16 --width 16 --questions 16 "
        "--max-num-seqs 64 ",
    ),
    # The same closed loop with the fairness bound off (age order alone) against `direct`.
    "rebase_scheduler_share0": _bench(
        "rebase_scheduler_share0",
        "rebase_bench",
        "throughput --configs priority16-share0,direct16 --width 16 --questions 16 "
        "--max-num-seqs 64 ",
    ),
    # The same comparison with open-loop (Poisson) arrivals, the fairness bound off and on.
    "rebase_open_loop": _bench(
        "rebase_open_loop",
        "rebase_bench",
        "throughput --configs priority16-share0,priority16,direct16,fair16 --width 8 "
        "--questions 12 --max-num-seqs 32 --arrival-rate 0.1 ",
    ),
    # Early stopping on the scheduler benchmark's trees: the full search (shadow mode) vs exact.
    "rebase_early_stop": _bench(
        "rebase_early_stop",
        "rebase_bench",
        "throughput --configs fair16-off,fair16-exact --width 16 --questions 16 --max-num-seqs 64 ",
    ),
    "rebase_early_stop_open": _bench(
        "rebase_early_stop_open",
        "rebase_bench",
        "throughput --configs fair16-off,fair16-exact --width 16 --questions 16 "
        "--max-num-seqs 64 --arrival-rate 0.1 ",
    ),
    # Where the answers converge: easy sums, exact and adaptive at 0.9 / 0.95.
    "rebase_early_stop_easy": _bench(
        "rebase_early_stop_easy",
        "rebase_bench",
        "throughput --dataset easy_arithmetic --configs fair16-off,fair16-exact,fair16-c90,"
        "fair16-c95,fair16-c95-w16 --width 16 --questions 16 --max-num-seqs 64 ",
    ),
    # Where the answers rarely converge: the adaptive rule (with windows) on GSM8K.
    "rebase_early_stop_adaptive": _bench(
        "rebase_early_stop_adaptive",
        "rebase_bench",
        "throughput --configs fair16-off,fair16-c90,fair16-c95 --width 16 --questions 16 "
        "--max-num-seqs 64 ",
    ),
    "quiet_star_forward": _bench("quiet_star_forward", "quiet_star_bench", "forward "),
    "quiet_star_speed": _bench("quiet_star_speed", "quiet_star_bench", "speed "),
    "quiet_star_methods": _bench("quiet_star_methods", "quiet_star_bench", "methods "),
    "quiet_star_coherence": _bench("quiet_star_coherence", "quiet_star_bench", "coherence "),
    "remote_hop": _bench("remote_hop", "remote_hop", ""),
    # Quiet-STaR on replicas: continuation vs in process (and the old per-token remote path).
    "remote_hop_qs_c1": _bench(
        "remote_hop_qs_c1",
        "remote_hop",
        "--methods quiet_star --concurrency 1 --sides inprocess remote remote_per_token ",
    ),
    "remote_hop_qs_c8": _bench(
        "remote_hop_qs_c8",
        "remote_hop",
        "--methods quiet_star --concurrency 8 --sides inprocess remote remote_per_token ",
    ),
    "cpu_binding": _bench("cpu_binding", "cpu_binding", ""),
    "accounting_check": _bench("accounting_check", "accounting_check", ""),
    # On a lent GPU (no CI machine has one); the command runs every GPU-only check.
    "gpu_checks": Source(
        "docs/data/gpu_checks_h200.json",
        "gpu_checks",
        "python -m loadtest.benchmarks.gpu_checks --out DIR  # on a GPU; copy DIR/gpu_checks.json",
    ),
}


# Tables whose name is not their source's: name -> source.
ALIASES = {"rebase_flops": "rebase_throughput"}


def _benchmark_block(name: str) -> str:
    source_name = name.split(".")[0]
    source = SOURCES[ALIASES.get(source_name, source_name)]
    path = REPO / source.data
    if not path.is_file():
        return f"_Re-measurement pending:_ `{source.command}`\n"
    payload = json.loads(path.read_text())
    module = __import__(f"loadtest.benchmarks.{source.module}", fromlist=["tables"])
    tables: dict[str, str] = module.tables(payload)
    if name not in tables:
        raise KeyError(f"{source.data} has no table {name!r} (it has {sorted(tables)})")
    p = payload.get("provenance") or {}
    note = (
        f"From [{source.data}](../{source.data}), {p.get('date_utc', '?')}, commit "
        f"`{(p.get('git_commit') or '?')[:10]}`{tree_note(p)}{machine_note(p)}"
        f"{accounting_note(p)}: "
        f"`{p.get('command', source.command)}`"
    )
    if payload.get("partial"):
        note += " (**partial**: the run did not finish)"
    return f"{tables[name]}\n\n{note}\n"


def tree_note(p: dict[str, Any]) -> str:
    """The dirty flag: a figure from uncommitted code says so, with the changes' hash."""
    if not p.get("git_dirty"):
        return ""
    digest = p.get("git_diff_sha256")
    detail = f"diff sha256 `{digest[:12]}`" if digest else "changes not recorded"
    return f" (**dirty tree**: {detail})"


def accounting_note(p: dict[str, Any]) -> str:
    """Whether the run's FLOPs add up: each gateway's charge against vLLM's own counter."""
    acc = p.get("accounting") or {}
    # Windows recorded before the check knew remote-engine gateways (vLLM counted nothing in
    # the gateway's process while it charged work) are not checks: their counters are on the
    # replicas (loadtest/harness/accounting.py).
    remote = [m for m in acc.get("mismatches") or [] if _remote_window(m)]
    mismatches = [m for m in acc.get("mismatches") or [] if not _remote_window(m)]
    checked = (acc.get("checked") or 0) - len(remote)
    if REMOTE_NOTE in (acc.get("unchecked") or []) or remote:
        tail = "; remote-engine gateways unchecked (vLLM's counters are on the replicas)"
    else:
        tail = ""
    if not checked:
        return tail
    if mismatches:
        return f" (**accounting MISMATCH** in {len(mismatches)} of {checked} gateways){tail}"
    return f"; accounting adds up ({checked} gateway{'s' if checked > 1 else ''}){tail}"


def _remote_window(window: dict[str, Any]) -> bool:
    return not window.get("vllm_iteration_tokens") and bool(window.get("gateway_engine_tokens"))


def machine_note(p: dict[str, Any]) -> str:
    """Where it ran: the CPU, whether it has native bf16, and each side's reported dtype."""
    machine = p.get("machine") or {}
    parts = []
    if machine.get("cpu_model"):
        flags = machine.get("cpu_flags")
        bf16 = ""
        if flags is not None:
            native = flags.get("avx512_bf16") or flags.get("amx_bf16")
            bf16 = f", native bf16 {'yes' if native else 'no'}"
        parts.append(f"{machine['cpu_model']}{bf16}")
    dtypes = []
    for kind, entries in (p.get("sides") or {}).items():
        found = sorted({d for e in entries for d in (e.get("dtype") or {}).values()})
        if found:
            dtypes.append(f"{kind} {'/'.join(found)}")
    if dtypes:
        parts.append("dtype " + ", ".join(dtypes))
    return f", on {'; '.join(parts)}" if parts else ""


def _results_block(name: str) -> str:
    from loadtest.records import read_records
    from loadtest.report import markdown_table
    from loadtest.summary import summarize

    path = REPO / RECORDS
    if not path.is_file():
        return "_Re-measurement pending:_ `python -m loadtest.benchmarks.results_run`\n"
    summaries = summarize(read_records(path))
    if name == "results.table":
        return markdown_table(summaries) + "\n" + _results_note()
    if name == "results.ratios":
        return _ratios(summaries)
    raise KeyError(name)


def _results_note() -> str:
    """Where the replay ran, from its summary.json (runs from before provenance: nothing)."""
    summary = REPO / RESULTS_SUMMARY
    p = {}
    if summary.is_file():
        p = (json.loads(summary.read_text()).get("run") or {}).get("provenance") or {}
    if not p:
        return ""
    return (
        f"\nFrom [{RESULTS_SUMMARY}](../{RESULTS_SUMMARY}), {p.get('date_utc', '?')}, commit "
        f"`{(p.get('git_commit') or '?')[:10]}`{tree_note(p)}{machine_note(p)}\n"
    )


def _ratios(summaries: list[Any]) -> str:
    """Per config: nominal FLOPs against baseline, and what the prefix cache saved."""
    base = next((s for s in summaries if s.method == "baseline"), None)
    lines = [
        "| config | nominal FLOPs / baseline's | executed / nominal (1 − cache saving) |",
        "|---|---|---|",
    ]
    for s in summaries:
        rel = (
            f"{s.tflops_nominal_per_problem / base.tflops_nominal_per_problem:.1f}x"
            if base and base.tflops_nominal_per_problem
            else "–"
        )
        frac = (
            f"{s.tflops_executed_per_problem / s.tflops_nominal_per_problem:.2f}"
            if s.tflops_nominal_per_problem
            else "–"
        )
        lines.append(f"| {s.config} | {rel} | {frac} |")
    return "\n".join(lines) + "\n"


def _paper_block(name: str) -> str:
    from loadtest.protocols import PAPER_ROWS

    lines = [
        "| config | accuracy | TFLOPs / question | seconds / question | efficiency |",
        "|---|---|---|---|---|",
    ]
    for p in PAPER_ROWS.values():
        lines.append(
            f"| {p.label} | {100 * p.accuracy:.2f} % | {p.tflops:.2f} | {p.seconds:.2f} "
            f"| {p.efficiency:.2f} |"
        )
    return "\n".join(lines) + "\n"


def render_block(name: str) -> str:
    """The text of one generated block."""
    kinds: dict[str, Callable[[str], str]] = {"results": _results_block, "paper": _paper_block}
    return kinds.get(name.split(".")[0], _benchmark_block)(name)


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""
    return BLOCK_RE.sub(lambda m: m.group(1) + render_block(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest docs", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail if a doc is not up to date")
    p.add_argument("files", nargs="*", default=[*DOCS, *PROSE_DOCS])
    args = p.parse_args(argv)
    stale = []
    for name in args.files:
        path = REPO / name
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python -m loadtest docs)", file=sys.stderr)
        return 1
    print(("rewrote: " if stale else "up to date: ") + ", ".join(stale or args.files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
