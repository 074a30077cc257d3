"""The paper's three plots as PNG: accuracy vs FLOPs, accuracy vs runtime (log x), efficiency.

Why the Agg backend: the tool runs on servers without a display. With `paper=True` the paper's
points are drawn as hollow grey markers, so our model's trade-off sits next to theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.protocols import PAPER_ROWS
from loadtest.report import ConfigSummary

PLOT_FILES = ("accuracy_vs_flops.png", "accuracy_vs_runtime.png", "efficiency.png")


def _scatter(
    summaries: Sequence[ConfigSummary],
    x_of: str,
    xlabel: str,
    paper_x: str | None,
    path: Path,
) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in summaries:
        x = getattr(s, x_of)
        if s.accuracy is None or x is None or x <= 0:
            continue  # nothing to place on a log axis
        acc = 100 * s.accuracy
        yerr = None
        if s.ci_low is not None and s.ci_high is not None:
            yerr = [[max(0.0, acc - 100 * s.ci_low)], [max(0.0, 100 * s.ci_high - acc)]]
        ax.errorbar([x], [acc], yerr=yerr, fmt="o", capsize=3, label=s.config)
    if paper_x is not None:
        for key, p in PAPER_ROWS.items():
            ax.scatter(
                [getattr(p, paper_x)],
                [100 * p.accuracy],
                facecolors="none",
                edgecolors="grey",
                marker="s",
            )
            ax.annotate(
                f"paper {key}",
                (getattr(p, paper_x), 100 * p.accuracy),
                fontsize=7,
                color="grey",
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(summaries: Sequence[ConfigSummary], paper: bool, path: Path) -> None:
    names = [s.config for s in summaries]
    values = [s.efficiency or 0.0 for s in summaries]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = range(len(names))
    ax.bar(xs, values, width=0.4 if paper else 0.7, label="ours")
    if paper:
        ref = [PAPER_ROWS[n].efficiency if n in PAPER_ROWS else 0.0 for n in names]
        ax.bar([x + 0.4 for x in xs], ref, width=0.4, color="lightgrey", label="paper")
        ax.legend(fontsize=8)
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylabel("efficiency = (acc%/TFLOPs) x (acc%/s) x 100")
    if any(v > 0 for v in values):
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(summaries: Sequence[ConfigSummary], out_dir: Path, *, paper: bool = False) -> None:
    """Write the three PNGs into `out_dir`."""
    flops_file, runtime_file, eff_file = (out_dir / f for f in PLOT_FILES)
    _scatter(
        summaries,
        "tflops_nominal_per_problem",
        "nominal TFLOPs per question (log)",
        "tflops" if paper else None,
        flops_file,
    )
    _scatter(
        summaries,
        "latency_mean_s",
        "seconds per question (log)",
        "seconds" if paper else None,
        runtime_file,
    )
    _bars(summaries, paper, eff_file)
