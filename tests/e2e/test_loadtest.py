"""The replay tool against the real gateway (tiny random model): records, report and plots.

The tiny model's answers are noise, so accuracy is only checked to be a fraction; what must hold
exactly is the bookkeeping: one record per (problem, config), every request's usage charged,
FLOPs positive and equal to the sum of the responses' `usage.flops`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtest.harness.data import load_problems
from loadtest.plots import PLOT_FILES
from loadtest.records import read_records

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "fixtures" / "gsm8k_sample.jsonl"


def loadtest(*argv: str) -> subprocess.CompletedProcess[str]:
    # A lock of its own: a benchmark running on this machine must not fail the test (or v.v.).
    env = {**os.environ, "THINKSCALE_BENCH_LOCK": str(REPO / ".pytest_cache" / "bench.lock")}
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_bookkeeping(out: Path, configs: dict[str, int]) -> list:
    """`configs`: config -> requests per problem. Returns the records."""
    records = read_records(out / "records.jsonl")
    assert sorted({r.config for r in records}) == sorted(configs)
    for r in records:
        assert r.error is None, r.error
        assert r.model == "tiny"
        assert r.requests == configs[r.config] == len(r.usages)
        assert r.flops_executed > 0 and r.flops_nominal >= r.flops_executed
        assert r.flops_executed == pytest.approx(sum(u["flops"]["executed"] for u in r.usages))
        assert r.flops_nominal == pytest.approx(sum(u["flops"]["nominal"] for u in r.usages))
        assert r.completion_tokens == sum(u["completion_tokens"] for u in r.usages) > 0
        assert r.latency > 0
        assert r.ttft is None or 0 < r.ttft <= r.latency  # None: no visible text at all
        assert r.end_time >= r.start_time
    summary = json.loads((out / "summary.json").read_text())
    where = summary["run"]["provenance"]  # where the replay ran and on what tree
    assert len(where["git_commit"]) == 40 and isinstance(where["git_dirty"], bool)
    assert "cpu_flags" in where["machine"] and where["command"].startswith("python -m loadtest")
    for c in summary["configs"]:
        assert c["problems"] == sum(r.config == c["config"] for r in records)
        assert 0.0 <= c["accuracy"] <= 1.0
        assert c["ci_low"] <= c["accuracy"] <= c["ci_high"]
        mine = [r for r in records if r.config == c["config"]]
        assert c["total_tflops_executed"] == pytest.approx(
            sum(r.flops_executed for r in mine) / 1e12
        )
    assert any(r.ttft is not None for r in records)
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    return records


def test_replay_closed_loop(gateway, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = loadtest(
        "run", "--url", gateway.url, "--data", str(SAMPLE), "--limit", "3",
        "--methods", "baseline,votes,no_such_method",
        "--method-params", '{"votes": {"method": "baseline", "n": 2, "temperature": 1.0}}',
        "--max-tokens", "16", "--concurrency", "2", "--sample-seed", "0",
        "--out", str(out), "--no-progress", "--save-text",
    )  # fmt: skip
    assert "skipping 'no_such_method'" in proc.stderr
    records = check_bookkeeping(out, {"baseline": 1, "votes": 1})
    assert [r.problem_id for r in records] == ["test-0", "test-1", "test-2"] * 2
    assert all(len(r.votes) == 2 and len(r.texts) == 2 for r in records if r.config == "votes")
    assert [r.reference for r in records[:3]] == ["18", "3", "70000"]
    report = (out / "report.md").read_text()
    assert proc.stdout == report + "\n"
    assert "| baseline | – | 3 |" in report and "| votes | – | 3 |" in report

    # The same report again from the saved records alone.
    again = tmp_path / "again"
    rebuilt = loadtest("report", str(out / "records.jsonl"), "--out", str(again), "--no-plots")
    assert (again / "report.md").read_text() == report
    assert rebuilt.stdout.strip() == report.strip()


def test_seed_protocol_open_loop(gateway, tmp_path: Path) -> None:
    out = tmp_path / "seed"
    offered = httpx.get(f"{gateway.url}/v1/models").json()["data"][0]["methods"]
    proc = loadtest(
        "--protocol", "seed", "--url", gateway.url, "--data", str(SAMPLE), "--limit", "2",
        "--methods", "baseline,quiet_star", "--n", "2", "--max-tokens", "24",
        "--rate", "4", "--out", str(out), "--no-progress",
    )  # fmt: skip
    # two requests per problem: the reasoning pass and the answer pass
    expected_configs = {m: 2 for m in ("baseline", "quiet_star") if m in offered}
    records = check_bookkeeping(out, expected_configs)
    assert {r.protocol for r in records} == {"seed"}
    # Dataset.shuffle(seed=42) over the 8 fixture problems, first two
    expected = [p.id for p in load_problems(str(SAMPLE), "test", shuffle=True, seed=42, limit=2)]
    assert [r.problem_id for r in records if r.config == "baseline"] == expected
    for r in records:
        assert len(r.votes) == 2
        # the answer pass decodes 12 more tokens per sample
        assert r.usages[1]["completion_tokens"] <= 2 * 12
        assert r.usages[1]["prompt_tokens"] > r.usages[0]["prompt_tokens"]
    if "quiet_star" not in offered:
        assert "skipping 'quiet_star'" in proc.stderr
    report = (out / "report.md").read_text()
    assert "## Next to the paper" in report
    assert "| rebase w=3 |" in report  # the paper's rows are listed even where we ran none


def test_seed_protocol_side_by_side_with_both_flops_conventions(gateway, tmp_path: Path) -> None:
    """`--protocol seed --limit 4`: the table next to the paper's carries our policy FLOPs and
    the paper's convention (7.65 GFLOPs per charged token), REBASE with the seed's options."""
    out = tmp_path / "seed4"
    offered = httpx.get(f"{gateway.url}/v1/models").json()["data"][0]["methods"]
    proc = loadtest(
        "--protocol", "seed", "--url", gateway.url, "--data", str(SAMPLE), "--limit", "4",
        "--methods", "baseline,rebase w=3", "--n", "2", "--max-tokens", "24",
        "--rebase-aggregation", "best_of_n", "--rebase-prune-score", "0.1",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert "rebase" in offered
    records = check_bookkeeping(out, {"baseline": 2, "rebase w=3": 2})
    assert len(records) == 8
    for r in records:
        first, answer = r.usages
        if r.config == "baseline":
            # generated tokens of both passes, no prompt, no thoughts
            assert r.seed_tokens == first["completion_tokens"] + answer["completion_tokens"]
        else:
            # 96 tokens per step of every path; a 24-token cap allows one step: 3 paths
            assert r.seed_tokens == 3 * 96 + answer["completion_tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["paper_gflops_per_token"] == 7.65
    for c in summary["configs"]:
        mine = [r for r in records if r.config == c["config"]]
        assert c["paper_tflops_per_problem"] == pytest.approx(
            sum(r.seed_tokens for r in mine) * 7.65e9 / 1e12 / 4
        )
        assert c["policy_tflops_nominal_per_problem"] > 0
    report = (out / "report.md").read_text()
    assert proc.stdout == report + "\n"
    side = report.split("## Next to the paper")[1]
    assert (
        "TFLOPs/q ours (policy, nominal)" in side and "TFLOPs/q ours (paper's convention)" in side
    )
    row = next(line for line in side.splitlines() if line.startswith("| rebase w=3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "2.35"  # the paper's, in its convention, beside ours
    assert cells[3] != "–" and cells[4] != "–" and cells[3] != cells[4]
