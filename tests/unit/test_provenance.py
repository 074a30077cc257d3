"""Every result says where it ran (loadtest/harness/provenance.py): the CPU and its flags, the
source tree (dirty flag and a hash of the uncommitted changes, untracked files too), and what
each side's engine reported (dtype, thread binding); the generated notes print the dirty flag."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from loadtest import docs
from loadtest.harness import provenance as prov
from loadtest.harness.results import write_result

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""

# What vLLM 0.32's engine core logs at start (shortened config), from a real gateway log.
ENGINE_LOG = """\
(EngineCore pid=9398) INFO 12-04 15:36:21 [core.py:133] Initializing a V1 LLM engine (v0.32.0) \
with config: model='/tmp/x/tiny', speculative_config=None, tokenizer='/tmp/x/tiny', \
trust_remote_code=False, dtype=torch.float32, max_seq_len=512, kv_cache_dtype=auto, seed=0
(EngineCore pid=9398) INFO 12-04 15:36:21 [ompmultiprocessing.py:185] OpenMP thread binding info:
(EngineCore pid=9398) INFO 12-04 15:36:21 [ompmultiprocessing.py:185] \
\tVLLM_CPU_OMP_THREADS_BIND='0,1', auto_setup=False, skip_setup=False
(EngineCore pid=9398) INFO 12-04 15:36:21 [ompmultiprocessing.py:185] \
\tlocal_world_size=1, reserve_cpu_num=1
(EngineCore pid=9398) INFO 12-04 15:36:21 [ompmultiprocessing.py:185] \
\tlocal_rank=0, core ids=[0, 1]
"""


@pytest.fixture(autouse=True)
def _fresh_registry():
    prov.reset()
    yield
    prov.reset()


def test_cpu_info_reports_the_model_and_each_flag_present_or_absent() -> None:
    info = prov.cpu_info(CPUINFO)
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert info["cpu_flags"] == {
        "avx512_bf16": True,
        "amx_bf16": True,
        "amx_tile": True,
        "amx_int8": False,
        "avx512f": True,
        "avx2": True,
    }
    # No flags line (another architecture): unknown, never "absent".
    assert prov.cpu_info("model name : Some ARM\n")["cpu_flags"] is None


def test_engine_report_reads_dtype_and_binding_from_the_log() -> None:
    report = prov.engine_report(ENGINE_LOG)
    assert report == {"dtype": {"tiny": "float32"}, "omp_threads_bind": "0,1", "core_ids": [0, 1]}
    # A probe that logs first is superseded by the engine that serves the same model.
    probe = ENGINE_LOG.replace("torch.float32", "torch.bfloat16").splitlines()[0]
    assert prov.engine_report(probe + "\n" + ENGINE_LOG)["dtype"] == {"tiny": "float32"}
    # A hub id is kept whole; a GPU log has no OpenMP binding.
    gpu = (
        ENGINE_LOG.splitlines()[0].replace("/tmp/x/tiny", "org/model").replace("float32", "float16")
    )
    assert prov.engine_report(gpu) == {"dtype": {"org/model": "float16"}}


def test_sides_count_identical_starts_and_adopt_a_childs() -> None:
    report = prov.engine_report(ENGINE_LOG)
    prov.record_side("gateway", report)
    prov.record_side("gateway", report)
    prov.record_side("gateway", {**report, "omp_threads_bind": "auto"})
    child = {"provenance": {"sides": {"hf": [{"dtype": {"m": "float32"}, "starts": 2}]}}}
    prov.adopt_sides(child)
    sides = prov.sides()
    assert [e["starts"] for e in sides["gateway"]] == [2, 1]
    assert sides["gateway"][1]["omp_threads_bind"] == "auto"
    assert sides["hf"] == [{"dtype": {"m": "float32"}, "starts": 2}]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-commit repository standing in for the checkout."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("*.log\n")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "init")
    monkeypatch.setattr(prov, "REPO", root)
    return root


def test_git_state_hashes_tracked_and_untracked_changes(repo: Path) -> None:
    clean = prov.git_state()
    assert len(clean["git_commit"]) == 40
    assert clean["git_dirty"] is False and clean["git_diff_sha256"] is None
    (repo / "run.log").write_text("ignored output")
    assert prov.git_state()["git_dirty"] is False  # .gitignore'd files are not changes

    (repo / "code.py").write_text("x = 2\n")
    edited = prov.git_state()
    assert edited["git_dirty"] is True and len(edited["git_diff_sha256"]) == 64
    assert edited["git_dirty_paths"] == ["code.py"]

    (repo / "new.py").write_text("y = 1\n")
    with_new = prov.git_state()
    assert with_new["git_diff_sha256"] != edited["git_diff_sha256"]
    assert with_new["git_dirty_paths"] == ["code.py", "new.py (untracked)"]
    (repo / "new.py").write_text("y = 2\n")  # an untracked file's content counts too
    assert prov.git_state()["git_diff_sha256"] != with_new["git_diff_sha256"]

    (repo / "new.py").unlink()
    (repo / "code.py").write_text("x = 1\n")
    assert prov.git_state()["git_dirty"] is False


def test_the_runs_own_output_is_not_a_change(repo: Path) -> None:
    """Pinned at the start, excluding the result file: rewriting it keeps the run clean."""
    out = repo / "data" / "result.json"
    prov.pin_source(out)
    write_result(out, "demo", {"sessions": []})
    write_result(out, "demo", {"sessions": [1]})  # a later partial save, same provenance
    p = json.loads(out.read_text())["provenance"]
    assert p["git_dirty"] is False and p["git_diff_sha256"] is None
    # Without a pin, the file being written is still left out, other changes are not.
    prov.reset()
    (repo / "code.py").write_text("x = 3\n")
    p = write_result(out, "demo", {})["provenance"]
    assert p["git_dirty"] is True and p["git_dirty_paths"] == ["code.py"]


def test_result_file_carries_machine_threads_and_sides(tmp_path: Path) -> None:
    prov.record_side("vllm", prov.engine_report(ENGINE_LOG))
    p = write_result(tmp_path / "r.json", "demo", {})["provenance"]
    assert set(p["machine"]) >= {"cpu_model", "cpu_flags", "cpus"}
    if p["machine"]["cpu_flags"] is not None:
        assert set(p["machine"]["cpu_flags"]) == set(prov.CPU_FLAGS)
    assert "VLLM_CPU_OMP_THREADS_BIND" in p["thread_env"]
    assert p["sides"]["vllm"][0]["dtype"] == {"tiny": "float32"}
    assert {"git_commit", "git_dirty", "git_diff_sha256"} <= set(p)


def test_generated_note_prints_the_dirty_flag_cpu_and_dtypes() -> None:
    dirty = {
        "git_dirty": True,
        "git_diff_sha256": "ab" * 32,
        "machine": {"cpu_model": "Xeon", "cpu_flags": dict.fromkeys(prov.CPU_FLAGS, True)},
        "sides": {"gateway": [{"dtype": {"m": "bfloat16"}}], "hf": [{"dtype": {"m": "float32"}}]},
    }
    assert docs.tree_note(dirty) == " (**dirty tree**: diff sha256 `abababababab`)"
    assert (
        docs.machine_note(dirty) == ", on Xeon, native bf16 yes; dtype gateway bfloat16, hf float32"
    )
    # Results from before the hash was recorded still say they are dirty.
    assert docs.tree_note({"git_dirty": True}) == " (**dirty tree**: changes not recorded)"
    assert docs.tree_note({"git_dirty": False}) == ""
    assert docs.machine_note({}) == ""


def test_results_note_prints_the_replays_provenance(tmp_path: Path, monkeypatch) -> None:
    """docs/results.md's table names where the replay ran once summary.json says it."""
    monkeypatch.setattr(docs, "REPO", tmp_path)
    assert docs._results_note() == ""  # no summary (or one from before provenance): no note
    summary = tmp_path / docs.RESULTS_SUMMARY
    summary.parent.mkdir(parents=True)
    where = {"date_utc": "2026-12-04", "git_commit": "d" * 40, "git_dirty": True}
    summary.write_text(json.dumps({"run": {"provenance": where}}))
    note = docs._results_note()
    assert "`dddddddddd` (**dirty tree**: changes not recorded)" in note
