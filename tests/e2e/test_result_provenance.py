"""A started server's own log says what its engine runs: the result files' "sides" read it.

Why e2e: the dtype and thread binding are parsed from vLLM's start-up lines, so a vLLM that
rewords them must fail here rather than silently leave every result without its dtype.
"""

from __future__ import annotations

import os

import pytest

from loadtest.harness import provenance

pytestmark = pytest.mark.e2e


def test_gateway_start_records_the_engines_dtype_and_binding(gateway) -> None:
    report = provenance.engine_report(gateway.log())
    assert report["dtype"] == {gateway.model_dir.name: report["dtype"][gateway.model_dir.name]}
    assert report["dtype"][gateway.model_dir.name] in {"float32", "bfloat16", "float16"}
    if not os.path.exists("/dev/nvidia0"):  # the CPU backend logs its OpenMP binding
        assert report["omp_threads_bind"]
        assert report["core_ids"] and set(report["core_ids"]) <= os.sched_getaffinity(0)
    # The launcher recorded the same report for the result files.
    assert report in [
        {k: v for k, v in e.items() if k != "starts"} for e in provenance.sides()["gateway"]
    ]
