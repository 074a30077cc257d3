"""The paper's Figure 1 as three PNGs: accuracy vs FLOPs, accuracy vs runtime, efficiency.

Why the paper's points are always drawn: a reader compares our trade-off with theirs, so each
panel shows both, ours as filled circles with 95 % intervals, the paper's (Mistral-7B on one
A100) as hollow grey squares, each labelled. Log scales as in the paper. FLOPs are on one
convention per panel: the paper's (constant per generated token, loadtest/conventions.py) when
our records carry it, else our policy-only nominal count, and the axis label says which.
The Agg backend: the tool runs on servers without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.protocols import PAPER_ROWS
from loadtest.summary import ConfigSummary

PLOT_FILES = ("accuracy_vs_flops.png", "accuracy_vs_runtime.png", "efficiency.png")
PAPER_LABEL = "paper (Mistral-7B, A100)"
PAPER_STYLE = {"facecolors": "none", "edgecolors": "dimgrey", "marker": "s", "s": 60}
# Label placement (points offset, alignment) so the paper's six labels do not overlap.
LABEL_AT = {
    "baseline": ((0, -12), "center"),
    "quiet_star": ((-6, 0), "right"),
    "quiet_star+rebase": ((0, -12), "center"),
    "rebase w=3": ((-6, 4), "right"),
    "rebase w=6": ((0, 7), "center"),
    "rebase w=16": ((0, 7), "center"),
}


def _paper_convention(summaries: Sequence[ConfigSummary]) -> bool:
    return bool(summaries) and all(s.paper_tflops_per_problem is not None for s in summaries)


def _ours_flops(s: ConfigSummary, paper: bool) -> float | None:
    return s.paper_tflops_per_problem if paper else s.policy_tflops_nominal_per_problem


def _scatter(
    summaries: Sequence[ConfigSummary],
    ours_x,  # ConfigSummary -> float | None
    paper_x: str,
    xlabel: str,
    title: str,
    path: Path,
) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for s in summaries:
        x = ours_x(s)
        if s.accuracy is None or x is None or x <= 0:
            continue  # nothing to place on a log axis
        acc = 100 * s.accuracy
        yerr = None
        if s.ci_low is not None and s.ci_high is not None:
            yerr = [[max(0.0, acc - 100 * s.ci_low)], [max(0.0, 100 * s.ci_high - acc)]]
        ax.errorbar([x], [acc], yerr=yerr, fmt="o", capsize=3, label=f"ours: {s.config}")
    xs = [getattr(p, paper_x) for p in PAPER_ROWS.values()]
    ax.scatter(
        xs, [100 * p.accuracy for p in PAPER_ROWS.values()], label=PAPER_LABEL, **PAPER_STYLE
    )
    for (key, p), x in zip(PAPER_ROWS.items(), xs, strict=True):
        offset, ha = LABEL_AT.get(key, ((4, 3), "left"))
        ax.annotate(
            p.label, (x, 100 * p.accuracy), fontsize=7, color="dimgrey",
            xytext=offset, textcoords="offset points", ha=ha,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(summaries: Sequence[ConfigSummary], paper_conv: bool, path: Path) -> None:
    ours = {s.config: (s.efficiency_paper if paper_conv else s.efficiency) for s in summaries}
    names = list(dict.fromkeys([*PAPER_ROWS, *ours]))
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    ax.bar([x - 0.2 for x in xs], [ours.get(n) or 0.0 for n in names], width=0.4, label="ours")
    ax.bar(
        [x + 0.2 for x in xs],
        [PAPER_ROWS[n].efficiency if n in PAPER_ROWS else 0.0 for n in names],
        width=0.4, color="white", edgecolor="dimgrey", hatch="//", label=PAPER_LABEL,
    )  # fmt: skip
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    conv = "paper's FLOPs convention" if paper_conv else "our nominal FLOPs"
    ax.set_ylabel("(acc%/TFLOPs) x (acc%/s) x 100")
    ax.set_title(f"efficiency (log scale; ours with {conv})", fontsize=10)
    ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(summaries: Sequence[ConfigSummary], out_dir: Path) -> list[Path]:
    """Write the three panels into ``out_dir``; return their paths."""
    paths = [out_dir / f for f in PLOT_FILES]
    paper_conv = _paper_convention(summaries)
    conv = "paper's convention" if paper_conv else "ours: policy nominal; paper: its convention"
    _scatter(
        summaries,
        lambda s: _ours_flops(s, paper_conv),
        "tflops",
        f"TFLOPs per question (log; {conv})",
        "accuracy vs FLOPs",
        paths[0],
    )
    _scatter(
        summaries,
        lambda s: s.latency_mean_s,
        "seconds",
        "seconds per question (log)",
        "accuracy vs runtime (different hardware: a CPU here, an A100 in the paper)",
        paths[1],
    )
    _bars(summaries, paper_conv, paths[2])
    return paths
