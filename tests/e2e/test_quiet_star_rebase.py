"""End-to-end quiet_star+rebase: REBASE trees whose steps are decoded with Quiet-STaR."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e

PROMPT = "Q: Natalia sold 48 clips in April and half as many in May. How many?\nA:"
TREE = {"width": 3, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": 4}


def body(think: str, **overrides) -> dict:
    request = {
        "prompt": PROMPT,
        "max_tokens": 12,
        "seed": 4,
        "method": "quiet_star+rebase",
        "rebase": TREE,
        "quiet_star": {"thought_tokens": 2, "think": think},
    }
    request.update(overrides)
    return request


def test_both_variants_run_concurrently_and_think(http) -> None:
    with ThreadPoolExecutor(2) as pool:
        faithful, cheap = pool.map(
            lambda think: http.post("/v1/completions", json=body(think)),
            ["every_token", "step_start"],
        )
    assert faithful.status_code == 200, faithful.text
    assert cheap.status_code == 200, cheap.text
    faithful, cheap = faithful.json(), cheap.json()
    for result in (faithful, cheap):
        stats = result["method_details"]["rebase"][0]
        assert stats["leaves"] >= 1 and max(stats["level_sizes"]) <= TREE["width"]
        assert result["usage"]["thought_tokens"] > 0
        assert result["method"] == "quiet_star+rebase"
    # Faithful: every tree token was thought about (start + 2 thoughts + end = 4 per token).
    faithful_stats = faithful["method_details"]["rebase"][0]
    assert faithful["usage"]["thought_tokens"] == 4 * faithful_stats["tree_tokens"]
    # The cheaper variant thinks once per step, so at most once per node.
    cheap_stats = cheap["method_details"]["rebase"][0]
    assert cheap["usage"]["thought_tokens"] <= 4 * cheap_stats["nodes_expanded"]


def test_seeded_combination_is_reproducible(http) -> None:
    request = body("every_token", rebase={**TREE, "early_stop": "off"})  # see test_rebase.py
    first = http.post("/v1/completions", json=request).json()
    again = http.post("/v1/completions", json=request).json()
    assert first["choices"][0]["text"] == again["choices"][0]["text"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"quiet_star": {"mixing_weight": 2}}, "quiet_star.mixing_weight"),
        ({"rebase": {"width": -1}}, "rebase.width"),
        ({"logprobs": 1}, "logprobs"),
    ],
)
def test_invalid_combined_parameters_are_400(http, overrides, param) -> None:
    response = http.post("/v1/completions", json=body("every_token", **overrides))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
