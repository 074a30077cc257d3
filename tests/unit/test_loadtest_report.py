"""Report from saved records: the Markdown table against a golden file, summary numbers by hand,
and `python -m loadtest report` writing table, JSON and plots without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.plots import PLOT_FILES
from loadtest.records import Record, read_records, write_records
from loadtest.report import markdown_report, summarize

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOLDEN = FIXTURES / "loadtest_report.md"


def _r(
    config: str,
    method: str,
    pid: str,
    correct: bool,
    latency: float,
    start: float,
    executed: float,
    nominal: float,
    *,
    ttft: float | None = None,
    error: str | None = None,
    seed_tokens: int | None = 1000,
) -> Record:
    return Record(
        config=config,
        method=method,
        problem_id=pid,
        reference="7",
        predicted="7" if correct else ("3" if error is None else None),
        correct=correct,
        latency=latency,
        ttft=ttft,
        start_time=start,
        end_time=start + latency,
        requests=2,
        total_tokens=100,
        flops_executed=executed,
        flops_nominal=nominal,
        policy_flops_executed=executed,
        policy_flops_nominal=nominal,
        error=error,
        seed_tokens=seed_tokens,
        model="golden-model",
        protocol="seed",
    )


def hand_records() -> list[Record]:
    """Numbers chosen so every cell of the table can be worked out by hand."""
    return [
        _r("baseline", "baseline", "test-1", True, 2.0, 1000.0, 1e12, 2e12, ttft=0.5),
        _r("baseline", "baseline", "test-2", False, 4.0, 1000.0, 1e12, 2e12, ttft=1.0),
        _r("baseline", "baseline", "test-3", True, 6.0, 1002.0, 1e12, 2e12, ttft=1.5),
        _r("baseline", "baseline", "test-4", False, 1.0, 1004.0, 0.0, 0.0, error="HTTP 500: x"),
        _r(
            "rebase w=3",
            "rebase",
            "test-1",
            True,
            1.0,
            2000.0,
            0.5e12,
            1e12,
            ttft=0.2,
            seed_tokens=2000,
        ),
        _r(
            "rebase w=3",
            "rebase",
            "test-2",
            True,
            3.0,
            2000.5,
            0.5e12,
            1e12,
            ttft=0.4,
            seed_tokens=2000,
        ),
    ]


def test_summary_numbers_by_hand() -> None:
    base, rebase = summarize(hand_records())
    assert (base.problems, base.correct, base.errors) == (4, 2, 1)
    assert base.accuracy == 0.5
    assert base.runtime_s == 8.0  # first start 1000, last end 1008
    assert base.throughput_per_min == pytest.approx(30.0)
    # latency statistics over the three problems that did not fail: 2, 4, 6 s
    assert base.latency_mean_s == 4.0
    assert base.latency_p50_s == 4.0
    assert base.latency_p95_s == pytest.approx(5.8)
    assert base.ttft_p50_s == 1.0
    assert base.tflops_executed_per_problem == 0.75  # 3 TFLOPs over 4 problems
    assert base.tflops_nominal_per_problem == 1.5
    # the paper's convention: 7.65 GFLOPs x 1000 charged tokens per problem
    assert base.paper_tflops_per_problem == pytest.approx(7.65)
    assert rebase.paper_tflops_per_problem == pytest.approx(15.3)
    # efficiency in that convention: (100 / 15.3) * (100 / 2 s) * 100
    assert rebase.efficiency_paper == pytest.approx(100 / 15.3 * 50 * 100)
    assert summarize(hand_records(), 1.0)[0].paper_tflops_per_problem == pytest.approx(1.0)

    assert base.total_tflops_executed == 3.0
    # (50 % / 1.5 TFLOPs) x (50 % / 4 s) x 100
    assert base.efficiency == pytest.approx(50 / 1.5 * 50 / 4 * 100)
    assert base.efficiency_executed == pytest.approx(50 / 0.75 * 50 / 4 * 100)
    assert rebase.accuracy == 1.0
    assert rebase.runtime_s == 3.5
    assert rebase.efficiency == pytest.approx(100 / 1.0 * 100 / 2.0 * 100)
    assert rebase.ci_high == 1.0


def test_markdown_matches_golden() -> None:
    assert markdown_report(hand_records()) == GOLDEN.read_text()


def test_report_command_rebuilds_from_records(tmp_path: Path, capsys) -> None:
    records_path = tmp_path / "records.jsonl"
    write_records(records_path, hand_records())
    assert read_records(records_path) == hand_records()
    out = tmp_path / "report"
    assert main(["report", str(records_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == GOLDEN.read_text().strip()
    assert (out / "report.md").read_text() == GOLDEN.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "golden-model"
    assert summary["protocol"] == "seed"
    assert [c["config"] for c in summary["configs"]] == ["baseline", "rebase w=3"]
    assert summary["configs"][0]["accuracy"] == 0.5
    assert summary["paper"]["rebase w=3"]["efficiency"] == 601.14
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_paper_table_without_the_protocol() -> None:
    records = hand_records()
    for r in records:
        r.protocol = None
    text = markdown_report(records)
    assert "Next to the paper" not in text
    assert text.count("\n| baseline |") == 1


def test_paper_convention_unknown_for_old_records() -> None:
    records = hand_records()
    records[0].seed_tokens = None
    assert summarize(records)[0].paper_tflops_per_problem is None
