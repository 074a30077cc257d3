"""The tables in docs/benchmarks.md and docs/results.md are what the report command prints from
the committed data (docs/data/*.json, docs/results/records.jsonl); a figure anywhere else in the
docs (README.md, quiet_star.md, loadtest.md, architecture.md) that comes from docs/data/ is a
generated block too, or cites the revision that holds its data and matches it."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from loadtest import docs
from loadtest.docs import BLOCK_RE, DOCS, PROSE_DOCS, REPO, SOURCES, render

# `docs/data/NAME.json` named in prose, and a historical citation `git show REV:docs/data/...`,
# optionally followed by the commit it was measured on (its provenance's git_commit).
DATA_REF = re.compile(r"docs/data/(?P<name>[\w.-]+)\.json")
HISTORY_REF = re.compile(
    r"git show (?P<rev>[0-9a-f]{7,40}):(?P<path>docs/data/[\w.-]+\.json)`"
    r"(?:,\s+measured\s+on\s+`(?P<measured>[0-9a-f]{7,40})`)?"
)


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


@pytest.mark.parametrize("name", PROSE_DOCS)
def test_prose_figures_from_committed_data_are_generated(name: str) -> None:
    """Outside generated blocks, a doc names a result file only to cite an older revision of it
    (`git show REV:docs/data/X.json`); today's figures come from generated blocks."""
    text = (REPO / name).read_text()
    assert render(text) == text, f"{name} is stale: run `python -m loadtest docs`"
    prose = BLOCK_RE.sub("", text)
    historical = {m.start("path") + len("docs/") for m in HISTORY_REF.finditer(prose)}
    loose = [m[0] for m in DATA_REF.finditer(prose) if m.start() + len("docs/") not in historical]
    assert not loose, f"{name} quotes {loose} outside a generated block: generate the figure"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


def _history_available() -> bool:
    shallow = _git("rev-parse", "--is-shallow-repository")
    return shallow.returncode == 0 and shallow.stdout.strip() == "false"


def _history_citations() -> list[tuple[str, re.Match]]:
    return [
        (name, m)
        for name in (*DOCS, *PROSE_DOCS)
        for m in HISTORY_REF.finditer((REPO / name).read_text())
    ]


@pytest.mark.skipif(not _history_available(), reason="needs the full git history")
@pytest.mark.parametrize(
    ("name", "rev", "path", "measured"),
    [(n, m["rev"], m["path"], m["measured"]) for n, m in _history_citations()],
)
def test_history_citations_hold_the_data_they_name(name, rev, path, measured) -> None:
    """The cited revision holds the file, and the run in it was measured on the commit the
    doc says (a revision's file and the commit its run measured are easily confused)."""
    shown = _git("show", f"{rev}:{path}")
    assert shown.returncode == 0, f"{name}: `git show {rev}:{path}` fails: {shown.stderr}"
    if measured:
        commit = json.loads(shown.stdout)["provenance"]["git_commit"]
        assert commit.startswith(measured), f"{name}: {rev}:{path} was measured on {commit}"


@pytest.mark.skipif(not _history_available(), reason="needs the full git history")
def test_previous_speed_run_figures_match_their_data() -> None:
    """docs/benchmarks.md quotes the previous Quiet-STaR speed run's concurrency-1 speed-ups
    over hf:crop (t = 4 / 8): recomputed from the revision it cites."""
    from loadtest.benchmarks.quiet_star_bench import speed_cells

    text = (REPO / "docs/benchmarks.md").read_text()
    m = re.search(HISTORY_REF.pattern + r"[^;]*?\bgave\s+(?P<a>[\d.]+)×\s*/\s*(?P<b>[\d.]+)×", text)
    assert m and m["path"] == "docs/data/quiet_star_speed.json"
    cells = speed_cells(json.loads(_git("show", f"{m['rev']}:{m['path']}").stdout)["sessions"])
    ours, theirs = ("gateway:continuation", "hf:crop")
    got = [f"{cells[ours, t, 1]['median'] / cells[theirs, t, 1]['median']:.2f}" for t in (4, 8)]
    assert got == [m["a"], m["b"]]


def test_generated_note_marks_a_dirty_run(tmp_path, monkeypatch) -> None:
    """A result measured on a dirty tree says so in every note made from it."""
    payload = {
        "benchmark": "rebase_hf",
        "partial": False,
        "provenance": {
            "date_utc": "2026-12-01T10:00:00+00:00",
            "git_commit": "b" * 40,
            "git_dirty": True,
            "git_diff_sha256": "c" * 64,
            "command": "python -m loadtest.benchmarks.rebase_bench hf",
        },
        "sessions": [
            {"side": s, "round": 1, "seconds_per_question": 10.0, "generated_tokens": 10,
             "generated_tokens_per_s": 1.0}
            for s in ("gateway", "hf")
        ],
    }  # fmt: skip
    (tmp_path / "docs" / "data").mkdir(parents=True)
    (tmp_path / "docs/data/rebase_hf.json").write_text(json.dumps(payload))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    out = render("<!-- generated:rebase_hf -->\n<!-- end -->")
    assert "`bbbbbbbbbb` (**dirty tree**: diff sha256 `cccccccccccc`)" in out


@pytest.mark.skipif(not _history_available(), reason="needs the full git history")
def test_fused_variant_claim_matches_its_data() -> None:
    """docs/quiet_star.md: the one committed run of the fused one-token variant was faster
    against hf:crop at concurrency 8 than the first run of the kept code (t = 4 and 8)."""
    from loadtest.benchmarks.quiet_star_bench import speed_cells

    text = " ".join((REPO / "docs/quiet_star.md").read_text().split())
    fused, kept = "02f2eca", "90d12ae"
    assert f"`git show {fused}:docs/data/quiet_star_speed.json`" in text
    assert f"`git show {kept}:docs/data/quiet_star_speed.json`" in text
    assert "was faster against `hf:crop`" in text and "at concurrency 8" in text

    def speed_up(rev: str, t: int) -> float:
        show = _git("show", f"{rev}:docs/data/quiet_star_speed.json").stdout
        cells = speed_cells(json.loads(show)["sessions"])
        return cells["gateway:continuation", t, 8]["median"] / cells["hf:crop", t, 8]["median"]

    assert all(speed_up(fused, t) > speed_up(kept, t) for t in (4, 8))
