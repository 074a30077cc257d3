"""Unit tests of the start-up checks: the CPU bf16 probe's verdicts and the failure message."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from server.app import dtype_probe
from server.app.dtype_probe import ProbeVerdict, describe_exit, probe_command, settle_cpu_dtype
from server.app.warmup import failure_message
from server.core.config import Settings


def cpu_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"device": "cpu", "block_size": 32, "kv_cache_gib": 1, "cache_dir": tmp_path}
    return Settings(**(values | overrides))


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (-signal.SIGILL, "SIGILL (signal 4, illegal instruction)"),
        (128 + signal.SIGILL, "SIGILL (signal 4"),  # as a shell reports it
        (-signal.SIGSEGV, "SIGSEGV (signal 11"),
        (1, "exit code 1"),
        (None, "timed out"),
    ],
)
def test_exit_statuses_are_named(returncode, expected) -> None:
    assert expected in describe_exit(returncode)


def test_an_explicit_dtype_never_runs_the_probe(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dtype_probe, "_run_probe", lambda *a: pytest.fail("probe ran"))
    chosen = settle_cpu_dtype(cpu_settings(tmp_path, dtype="bfloat16"), "m")
    assert chosen.dtype == "bfloat16"


def test_a_passing_probe_serves_bf16_and_is_remembered(tmp_path, monkeypatch) -> None:
    runs = []

    def passing(settings, model):
        runs.append(model)
        return ProbeVerdict(True, 0, "passed", 1.0)

    monkeypatch.setattr(dtype_probe, "_run_probe", passing)
    settings = cpu_settings(tmp_path)
    assert settle_cpu_dtype(settings, "m").dtype == "bfloat16"
    assert settle_cpu_dtype(settings, "m").dtype == "bfloat16"
    assert runs == ["m"]  # the second start recalled the verdict
    # other served shapes are another verdict (the crash depended on the KV size)
    assert settle_cpu_dtype(cpu_settings(tmp_path, kv_cache_gib=4), "m").dtype == "bfloat16"
    assert runs == ["m", "m"]


def test_a_failed_probe_falls_back_to_float32_and_says_why(tmp_path, monkeypatch, caplog) -> None:
    verdict = ProbeVerdict(False, -4, "the bf16 probe died with SIGILL (signal 4, ...)", 2.0)
    monkeypatch.setattr(dtype_probe, "_run_probe", lambda *a: verdict)
    with caplog.at_level("WARNING"):
        assert settle_cpu_dtype(cpu_settings(tmp_path), "m").dtype == "float32"
    assert "not bfloat16" in caplog.text and "SIGILL" in caplog.text


def test_a_faulted_probe_is_never_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dtype_probe, "_run_probe", lambda *a: ProbeVerdict(False, -4, "x", 1.0))
    settle_cpu_dtype(cpu_settings(tmp_path, test_fault="bf16_probe_sigill"), "m")
    assert not list(tmp_path.rglob("*.json"))


def test_the_probe_runs_the_served_shapes(tmp_path) -> None:
    settings = cpu_settings(tmp_path, max_model_len=1024, kv_cache_gib=3, block_size=16)
    command = probe_command(settings, "/models/x")
    joined = " ".join(command)
    assert "--model /models/x" in joined and "--dtype bfloat16" in joined
    assert "--kv-cache-gib 3" in joined and "--block-size 16" in joined
    assert "--max-model-len 1024" in joined and "--die-with-sigill" not in joined


def test_the_failure_message_names_model_dtype_kv_and_cause(tmp_path) -> None:
    settings = cpu_settings(tmp_path, dtype="bfloat16")
    message = failure_message(
        settings, "/m", "warm-up", "boom", "EngineCore ended with SIGILL (signal 4, ...)"
    )
    for part in ("warm-up", "model /m", "dtype bfloat16", "KV cache 1 GiB", "SIGILL"):
        assert part in message
    assert "try --dtype float32" in message
    # float32 that ran out of memory is not blamed on bf16
    plain = failure_message(cpu_settings(tmp_path, dtype="float32"), "/m", "start", "OOM", "", True)
    assert "bfloat16" not in plain and "--kv-cache-gib" in plain
