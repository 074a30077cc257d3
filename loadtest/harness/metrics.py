"""A server's ``/metrics`` as numbers: one scrape, and the total of one series.

Why its own module: the launcher (``servers``), the accounting check (``accounting``, which the
launcher runs when a gateway stops) and the benchmarks all read ``/metrics``; here, below all of
them, no two harness modules import each other.
"""

from __future__ import annotations

import contextlib

import httpx


def scrape_metrics(url: str) -> dict[str, float]:
    """All samples of ``/metrics`` as ``{"name{labels}": value}``."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def metric_total(samples: dict[str, float], name: str, label: str | None = None) -> float:
    """Sum of every sample of one metric (optionally only those whose labels contain ``label``)."""
    return sum(
        v
        for k, v in samples.items()
        if (k == name or k.startswith(name + "{")) and (label is None or label in k)
    )
