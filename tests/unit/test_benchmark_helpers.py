"""The arithmetic the benchmarks rely on (loadtest/benchmarks), checked without any engine."""

from __future__ import annotations

import argparse
import json

import pytest

from loadtest.benchmarks.gateway_overhead import random_token_prompts
from loadtest.benchmarks.quiet_star_bench import expected_forward, tables, uncached_tail
from loadtest.benchmarks.rebase_bench import config_min_share, parse_config, tree_prompt_tokens
from loadtest.harness.cli import questions
from server.core.flops import FlopsModel
from server.core.usage import UsageMeter

SMOLLM2_CONFIG = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    "calls",
    [
        [(100, 96, 10), (110, 96, 1), (120, 0, 64)],
        [(50, 32, 2)] * 8,
    ],
)
def test_tree_prompt_tokens_inverts_the_usage_meter(calls) -> None:
    """sum(prompt) recovered from forward/cached/tree_tokens/engine_calls, as server/core/usage.py
    charges them, for any mix of calls that each generate >= 1 token."""
    meter = UsageMeter(FlopsModel.from_hf_config(SMOLLM2_CONFIG))
    for prompt, cached, generated in calls:
        meter.record_generation(
            prompt_tokens=prompt, cached_tokens=cached, generated_tokens=generated
        )
    policy = meter.component("policy")
    usage = {
        "forward_tokens": policy.forward_tokens,
        "cached_tokens": policy.cached_tokens,
        "engine_calls": policy.engine_calls,
    }
    tree = {"tree_tokens": sum(g for _, _, g in calls)}
    assert tree_prompt_tokens(usage, tree) == sum(p for p, _, _ in calls)


def test_random_token_prompts_are_seeded_and_in_range() -> None:
    a = random_token_prompts(4, 16, seed=3)
    assert a == random_token_prompts(4, 16, seed=3)
    assert a != random_token_prompts(4, 16, seed=4)
    assert all(len(p) == 16 and all(1000 <= t < 40000 for t in p) for p in a)


def test_benchmark_questions_are_the_first_test_problems_with_the_step_prompt(tmp_path) -> None:
    path = tmp_path / "test.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"work\n#### {i},000"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qs = questions(argparse.Namespace(data=str(path)), 2)
    assert [(p.index, p.reference) for p, _ in qs] == [(0, "0"), (1, "1000")]
    assert qs[1][1] == "Q: q1?\nA: Let's think step by step.\n"


def test_uncached_tail_and_expected_forward() -> None:
    # block 32: a 33-token context recomputes 1 position, a 64-token one the whole last block
    assert [uncached_tail(n, 32) for n in (1, 32, 33, 64, 65)] == [1, 32, 1, 32, 1]
    # 2 calls, contexts 33 and 34, 7 steps each: (1 + 6) + (2 + 6)
    assert expected_forward(33, 2, 7, 32) == 15


def test_parse_config() -> None:
    assert parse_config("fair8") == ("fair", 8) and parse_config("direct16") == ("direct", 16)
    assert parse_config("priority16") == ("priority", 16)
    assert parse_config("priority16-share0") == ("priority", 16)
    assert config_min_share("priority16-share0") == 0 and config_min_share("priority16") is None
    for bad in ("fast8", "fair8-share0", "priority16-share"):
        with pytest.raises(ValueError):
            parse_config(bad)


def test_gateway_overhead_summary_is_median_over_rounds_and_ratio_of_medians() -> None:
    from loadtest.benchmarks.gateway_overhead import METRICS, summary, tables

    def view(rps: float) -> dict:
        return {key: rps for key, _, _ in METRICS}

    sessions = [
        {"side": "vllm", "round": 1, "client": view(1.0)},
        {"side": "gateway", "round": 1, "client": view(0.9)},
        {"side": "gateway", "round": 2, "client": view(1.2)},
        {"side": "vllm", "round": 2, "client": view(1.2)},
        {"side": "vllm", "round": 3, "client": view(5.0)},  # one disturbed session
        {"side": "gateway", "round": 3, "client": view(1.1)},
    ]
    s = summary(sessions, "client")["requests_per_s"]
    assert s["vllm"] == {"median": 1.2, "min": 1.0, "max": 5.0, "n": 3}
    assert s["gateway"]["median"] == 1.1
    assert s["ratio"] == pytest.approx(1.1 / 1.2)
    text = tables({"summary": {"client": summary(sessions, "client")}})["gateway_overhead.client"]
    assert "| req/s | 1.200 (1.000–5.000) | 1.100 (0.900–1.200) | 0.917 |" in text


def _scheduler_session(side: str, rnd: int, ppm: float, p50: float) -> dict:
    return {
        "side": side,
        "round": rnd,
        "load": "closed",
        "problems_per_minute": ppm,
        "latency_p50_s": p50,
        "latency_p95_s": p50 * 1.5,
        "accuracy": 0.25,
        "occupancy": 0.5,
        "trees": {"cache_hit_fraction": 0.8, "flops_executed": 2e12, "ok": 2},
        "engine_cache_hit_fraction": 0.7,
        "engine_counters": {"vllm:num_preemptions_total": 3.0},
    }


def test_rebase_scheduler_table_reports_latency_occupancy_and_ratios() -> None:
    from loadtest.benchmarks.rebase_bench import percentile, tables

    assert percentile([], 0.5) is None and percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    sessions = [
        _scheduler_session(side, rnd, ppm, p50)
        for rnd in (1, 2, 3)
        for side, ppm, p50 in (("priority16", 13.0, 120.0), ("direct16", 10.0, 300.0),
                               ("fair16", 11.0, 280.0))
    ]  # fmt: skip
    text = tables({"benchmark": "rebase_throughput", "sessions": sessions})["rebase_throughput"]
    header = text.splitlines()[0]
    for column in ("p50 latency (s)", "p95 latency (s)", "preemptions", "batch occupancy",
                   "accuracy", "TFLOPs / question"):  # fmt: skip
        assert column in header
    assert "| priority16 | 13.00 | 120.0 | 180.0 | 3 |" in text
    assert "- scheduler, priority16 / direct16: problems/min 1.30x, p50 latency 0.40x" in text
    assert "- scheduler, priority16 / fair16: problems/min 1.18x, p50 latency 0.43x" in text
    assert "- scheduler, fair16 / direct16" in text


def test_quiet_star_speed_table_is_per_t_and_concurrency_with_speedups() -> None:
    def session(side: str, rnd: int, rates: dict[tuple[int, int], float]) -> dict:
        rows = [{"t": t, "concurrency": c, "tokens_per_s": v} for (t, c), v in rates.items()]
        return {"side": side, "round": rnd, "rows": rows}

    sessions = [
        session("gateway:continuation", 0, {(4, 1): 10.0, (4, 8): 40.0}),
        session("gateway:continuation", 1, {(4, 1): 12.0, (4, 8): 44.0}),
        session("gateway:per_token", 0, {(4, 1): 4.0, (4, 8): 14.0}),
        session("hf:crop", 0, {(4, 1): 11.0, (4, 8): 20.0}),
        session("hf:none", 0, {(4, 1): 1.0}),
    ]
    table = tables({"benchmark": "quiet_star_speed", "sessions": sessions})["quiet_star_speed"]
    assert "| 4 | 8 | 42" in table  # median of 40 and 44
    assert "| gateway:per_token | 4 | 8 | 3.00x |" in table  # 42 / 14
    assert "| hf:none | 4 | 1 | 11.00x |" in table
    assert "| hf:none | 4 | 8 |" not in table  # the batch-1 loop is measured at concurrency 1


def test_rounds_payload_alternates_sides_saves_each_session_and_summarises(tmp_path) -> None:
    import argparse

    from loadtest.harness import cli

    args = argparse.Namespace(rounds=2, out=tmp_path / "x.json", logs=None, model=None,
                              served_model_name=None, kv_cache_gib=4, dtype="float32",
                              block_size=32, seed=7)  # fmt: skip
    saved: list[int] = []
    payload = cli.rounds_payload(
        args,
        ("a", "b"),
        lambda r, side: {"side": side, "round": r},
        lambda ss: [s["side"] for s in ss],
        lambda partial: saved.append(len(partial["sessions"])),
    )
    assert payload["summary"] == ["a", "b", "b", "a"]
    assert saved == [1, 2, 3, 4]
    assert payload["settings"] == {"rounds": 2, "model": None, "served_model_name": None,
                                   "kv_cache_gib": 4, "dtype": "float32", "block_size": 32,
                                   "seed": 7}  # fmt: skip
    assert payload["engine"]["kv_cache_gib"] == 4


def test_engine_flags_follow_the_benchmark_options_on_gpu_and_cpu(tmp_path) -> None:
    """CPU defaults (float32, block 32) unless told; `--block-size 0` leaves the engine's."""
    from loadtest.harness import cli

    p = cli.parser("x")
    cpu = cli.engine_settings(p.parse_args(["--out", str(tmp_path / "a.json")]))
    assert cpu.dtype == "float32" and cpu.block_size == 32
    gpu_args = ["--out", str(tmp_path / "b.json"), "--dtype", "auto", "--block-size", "0"]
    gpu = cli.engine_settings(p.parse_args(gpu_args))
    flags = gpu.flags()
    assert flags[flags.index("--dtype") + 1] == "auto" and "--block-size" not in flags


def test_continuation_steps_counts_only_unfused_forced_tokens() -> None:
    from loadtest.benchmarks.quiet_star_bench import continuation_steps

    assert continuation_steps(4, 1, 1) == 7  # one-token delimiters: a step per position
    assert continuation_steps(4, 3, 3) == 6  # <think>-like: both runs share a step
    assert continuation_steps(8, 2, 1) == 12  # runs of one: sampled as forced
    assert continuation_steps(8, 2, 3) == 11
