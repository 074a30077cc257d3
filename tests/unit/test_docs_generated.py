"""The tables in docs/benchmarks.md and docs/results.md are what the report command prints from
the committed data (docs/data/*.json, docs/results/records.jsonl)."""

from __future__ import annotations

import json

import pytest

from loadtest import docs
from loadtest.docs import DOCS, REPO, SOURCES, render


@pytest.mark.parametrize("name", DOCS)
def test_doc_tables_equal_the_report_from_committed_data(name: str) -> None:
    text = (REPO / name).read_text()
    assert "<!-- generated:" in text
    assert render(text) == text, f"{name} is stale: run `python -m loadtest docs`"


def test_every_benchmark_table_has_a_block_in_the_docs() -> None:
    text = (REPO / "docs/benchmarks.md").read_text()
    for source in SOURCES:
        assert f"<!-- generated:{source}" in text


def test_a_committed_result_replaces_the_pending_line(tmp_path, monkeypatch) -> None:
    """With a result file present the block shows its table and where it came from."""
    payload = {
        "benchmark": "rebase_hf",
        "partial": False,
        "provenance": {"date_utc": "2026-12-01T10:00:00+00:00", "git_commit": "a" * 40,
                       "command": "python -m loadtest.benchmarks.rebase_bench hf"},
        "sessions": [
            {"side": s, "round": r, "seconds_per_question": sec, "generated_tokens": 1000,
             "generated_tokens_per_s": 1000 / sec}
            for r in (1, 2, 3) for s, sec in (("gateway", 10.0 + r), ("hf", 50.0 + r))
        ],
    }  # fmt: skip
    (tmp_path / "docs" / "data").mkdir(parents=True)
    (tmp_path / "docs/data/rebase_hf.json").write_text(json.dumps(payload))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    block = "<!-- generated:rebase_hf -->\nold\n<!-- end -->"
    out = render(block)
    assert "pending" not in out and "old" not in out
    assert "| gateway | 12.0 (11.0–13.0) | 1000 | 83.3 (76.9–90.9) |" in out
    assert "`aaaaaaaaaa`" in out and "python -m loadtest.benchmarks.rebase_bench hf" in out
    assert render(out) == out  # stable
