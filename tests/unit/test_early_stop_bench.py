"""The early-stop benchmark's parts: config suffixes, the easy-arithmetic set, shadow summaries."""

from __future__ import annotations

import pytest

from loadtest.benchmarks.rebase_bench import (
    EARLY_STOP_TABLES,
    config_early_stop,
    parse_config,
    shadow_summary,
    tables,
)
from loadtest.harness.easy_arithmetic import easy_problems
from server.core.answers import extract_answer


def test_early_stop_suffixes() -> None:
    assert parse_config("fair16-exact") == ("fair", 16)
    assert config_early_stop("fair16-off") == {"early_stop": "off", "shadow_stop": True}
    assert config_early_stop("fair16-exact") == {"early_stop": "exact"}
    # The adaptive rule's window is recorded even when it is the server's default.
    assert config_early_stop("priority16-share0-c95") == {
        "early_stop": {"confidence": 0.95, "window": 4}
    }
    assert config_early_stop("fair16-c95-w16") == {"early_stop": {"confidence": 0.95, "window": 16}}
    assert config_early_stop("fair16") is None
    for bad in ("fair16-c9", "fair16-maybe", "fair16-exact-off", "fair16-w4"):
        with pytest.raises(ValueError):
            parse_config(bad)
    with pytest.raises(ValueError, match="adaptive"):
        config_early_stop("fair16-exact-w4")


def test_easy_arithmetic_is_deterministic_and_its_references_are_right() -> None:
    first, again = easy_problems(20, seed=3), easy_problems(20, seed=3)
    assert first == again and first != easy_problems(20, seed=4)
    for problem, prompt in first:
        a, b = (int(x) for x in problem.question.removeprefix("What is ").rstrip("?").split(" + "))
        assert problem.reference == str(a + b)
        assert prompt.endswith(f"Q: {problem.question}\nA:")
        # The answer line the prompt teaches is one the vote's extractor reads.
        assert extract_answer(f" {a} + {b} = {a + b}\nThe answer is {a + b}.") == str(a + b)


def _tree(answer: str, flops: float, shadow: dict | None) -> dict:
    return {"question": 0, "answer": answer, "ended": "complete", "spent": {"flops": flops},
            "shadow": shadow}  # fmt: skip


def test_shadow_summary_counts_agreement_and_savings_over_all_trees() -> None:
    sessions = [
        {
            "early_stops": [
                _tree("12", 100.0, {"exact": {"answer": "12", "flops": 60.0}, "c": None}),
                _tree("7", 100.0, {"exact": None, "c": {"answer": "8", "flops": 50.0}}),
            ]
        }
    ]
    out = shadow_summary(sessions)
    # exact fired on one tree of two, agreed there; saved 40 of 200 FLOPs.
    assert out["exact"] == {
        "trees": 2, "fired": 0.5, "agreement": 1.0, "flops_saved": pytest.approx(0.2)
    }  # fmt: skip
    # c fired on the other and disagreed: 1 of 2 trees identical.
    assert out["c"]["agreement"] == 0.5 and out["c"]["flops_saved"] == pytest.approx(0.25)


def _session(side: str, rnd: int, early_stop: dict, answer: str, flops: float) -> dict:
    return {
        "side": side, "round": rnd, "problems_per_minute": 6.0, "latency_p50_s": 10.0,
        "latency_p95_s": 20.0, "accuracy": 1.0, "dataset": "easy_arithmetic",
        "trees": {"flops_executed": flops, "ok": 1}, "early_stop": early_stop,
        "early_stops": [
            {"question": 0, "answer": answer, "ended": "decided", "spent": {"flops": flops},
             "shadow": None}
        ],
    }  # fmt: skip


def test_early_stop_table_compares_each_setting_with_the_full_search() -> None:
    sessions = []
    for rnd in (1, 2, 3):
        sessions.append(_session("fair16-off", rnd, {"early_stop": "off", "shadow_stop": True},
                                 "12", 2e12))  # fmt: skip
        sessions.append(_session("fair16-exact", rnd, {"early_stop": "exact"}, "12", 1e12))
    payload = {"benchmark": "rebase_throughput", "sessions": sessions, "settings": {}}
    out = tables(payload)
    assert set(out) == set(EARLY_STOP_TABLES)
    table = out["rebase_early_stop"]
    assert "| fair16-exact | exact |" in table and "| fair16-off | off (shadow) |" in table
    assert "FLOPs per problem 0.50x" in table and "on 3/3 trees" in table
    assert "workload: easy_arithmetic, closed loop" in table
