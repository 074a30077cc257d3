"""End-to-end per-choice budgets on the tiny model: each method stops within one engine step of
its budget and says so (finish_reason "length", method_details["budget"], the cut counter)."""

from __future__ import annotations

import pytest

from tests.conftest import completion_ok, scrape_metrics
from tests.e2e.test_rebase import QUESTION

pytestmark = pytest.mark.e2e


def _budget(result: dict, index: int = 0) -> dict:
    return result["method_details"]["budget"][index]


def test_baseline_tokens_budget_caps_the_choice(http) -> None:
    body = {"prompt": "Budget test one.", "max_tokens": 40, "ignore_eos": True, "n": 2,
            "budget": {"tokens": 7}}  # fmt: skip
    result = completion_ok(http, body)
    assert [c["finish_reason"] for c in result["choices"]] == ["length", "length"]
    assert result["usage"]["completion_tokens"] == 2 * 7  # per choice, not per request
    assert {_budget(result, i)["cut"] for i in (0, 1)} == {"tokens"}


def test_baseline_flops_budget_stops_within_one_token(http) -> None:
    limit = 3e7
    body = {"prompt": "Budget test two, a prompt of its own.", "max_tokens": 400,
            "ignore_eos": True, "budget": {"flops": limit}}  # fmt: skip
    before = scrape_metrics(http)
    result = completion_ok(http, body)
    entry, usage = _budget(result), result["usage"]
    assert result["choices"][0]["finish_reason"] == "length"
    assert 0 < usage["completion_tokens"] < 400 and entry["cut"] == "flops"
    spent = usage["flops"]["executed"]
    assert entry["spent"]["flops"] == spent >= limit
    # One more token at most: a decode position costs at most twice the average position.
    assert spent - limit <= _cost_per_position(usage)
    cuts = 'thinkscale_budget_cuts_total{budget="flops",method="baseline"}'
    assert scrape_metrics(http)[cuts] == before.get(cuts, 0) + 1


def test_quiet_star_tokens_budget_counts_thoughts(http) -> None:
    body = {"prompt": "Budget test three.", "max_tokens": 50, "ignore_eos": True,
            "method": "quiet_star", "quiet_star": {"thought_tokens": 2},
            "budget": {"tokens": 30}}  # fmt: skip
    result = completion_ok(http, body)
    entry, usage = _budget(result), result["usage"]
    assert result["choices"][0]["finish_reason"] == "length" and entry["cut"] == "tokens"
    talk, thought = usage["completion_tokens"], usage["thought_tokens"]
    per_token = 1 + thought // talk  # a talk token and its thinking step
    assert 30 <= talk + thought <= 30 + per_token  # at most one step past the budget
    # The engine may have made one more token before the abort reached it (charged, unseen).
    assert talk + thought <= entry["spent"]["tokens"] <= max(talk + thought, 30) + 1


def _cost_per_position(usage: dict) -> float:
    """An upper bound of one more engine position: twice the request's average one."""
    return 2 * usage["flops"]["executed"] / usage["forward_tokens"]


def test_quiet_star_flops_budget_stops_within_one_engine_step(http) -> None:
    """The continuation call is one engine request for the whole sequence: the budget sees it
    after every engine step and aborts it mid-thought when spent, not at the next talk token."""
    body = {"prompt": "Budget test four.", "max_tokens": 60, "ignore_eos": True,
            "method": "quiet_star", "quiet_star": {"thought_tokens": 4}, "seed": 3}  # fmt: skip
    full = completion_ok(http, body)["usage"]["flops"]["executed"]
    limit = full / 2
    before = scrape_metrics(http)
    result = completion_ok(http, {**body, "budget": {"flops": limit}})
    entry, usage = _budget(result), result["usage"]
    assert result["choices"][0]["finish_reason"] == "length" and entry["cut"] == "flops"
    assert 0 < usage["completion_tokens"] < 60
    assert result["method_details"]["quiet_star"][0]["stopped_at_context_limit"] is False
    spent = usage["flops"]["executed"]
    assert entry["spent"]["flops"] == spent >= limit
    # Within one engine step of the budget: one step of one sequence is one position, or two
    # where a delimiter's forced tokens share the step before them.
    assert spent - limit <= 2 * _cost_per_position(usage)
    cuts = 'thinkscale_budget_cuts_total{budget="flops",method="quiet_star"}'
    assert scrape_metrics(http)[cuts] == before.get(cuts, 0) + 1


@pytest.mark.parametrize("kind", ["tokens", "flops"])
def test_quiet_star_rebase_budget_halts_the_search_mid_step(http, kind) -> None:
    tree = {"width": 4, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": 16}
    body = {"prompt": QUESTION, "max_tokens": 32, "ignore_eos": True,
            "method": "quiet_star+rebase", "rebase": tree,
            "quiet_star": {"thought_tokens": 2}, "seed": 5}  # fmt: skip
    full = completion_ok(http, body)
    spent_in_full = {
        "tokens": full["usage"]["completion_tokens"] + full["usage"]["thought_tokens"],
        "flops": full["usage"]["flops"]["executed"],
    }[kind]
    limit = spent_in_full // 3 if kind == "tokens" else spent_in_full / 3
    result = completion_ok(http, {**body, "budget": {kind: limit}})
    search, entry, usage = result["method_details"]["rebase"][0], _budget(result), result["usage"]
    assert search["ended"] == "budget" and entry["cut"] == kind
    assert result["choices"][0]["finish_reason"] == "length"
    assert usage["thought_tokens"] > 0  # thoughts are spent tokens too
    over = entry["spent"][kind] - limit
    # One engine step past the budget: a token for each of the tree's running sequences, plus
    # (FLOPs) that step's prefill chunk: the calls the halt aborted before their first output
    # (`unreported_tokens`) and one whose first output, prefill included, crossed the budget.
    if kind == "tokens":
        bound = tree["width"]
    else:
        prefill = (
            usage["components"]["policy"]["unreported_tokens"]
            + usage["prompt_tokens"]
            + body["max_tokens"]
        )
        bound = (tree["width"] + prefill) * _cost_per_position(usage)
    assert 0 <= over <= bound
    assert entry["spent"][kind] < spent_in_full  # it did stop early


def test_rebase_budget_answers_from_what_the_search_has(http) -> None:
    tree = {"width": 8, "max_step_tokens": 6, "step_delimiter": " ", "max_depth": 16}
    body = {"prompt": QUESTION, "max_tokens": 96, "ignore_eos": True, "method": "rebase",
            "rebase": tree, "seed": 5, "budget": {"tokens": 40}}  # fmt: skip
    result = completion_ok(http, body)
    search, entry = result["method_details"]["rebase"][0], _budget(result)
    assert search["ended"] == "budget" and entry["cut"] == "tokens"
    assert result["choices"][0]["finish_reason"] == "length"
    # Each of the tree's running sequences may add one token after the cut.
    assert 40 <= entry["spent"]["tokens"] <= 40 + tree["width"]
    assert search["answer"] is None or result["choices"][0]["text"]  # some path is returned


def test_rebase_seconds_budget_cuts_a_long_search(http) -> None:
    tree = {"width": 16, "max_step_tokens": 8, "step_delimiter": "@@", "max_depth": 64}
    body = {"prompt": QUESTION, "max_tokens": 512, "ignore_eos": True, "method": "rebase",
            "rebase": tree, "budget": {"seconds": 0.5}}  # fmt: skip
    result = completion_ok(http, body)
    search, entry = result["method_details"]["rebase"][0], _budget(result)
    assert search["ended"] == "budget" and entry["cut"] == "seconds"
    assert result["choices"][0]["finish_reason"] == "length"
    assert search["remaining_leaves"] > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"budget": {"flops": 1.0}}, "budget.flops"),  # less than one engine step
        ({"budget": {}}, "budget"),
        ({"budget": {"tokens": 0}}, "budget.tokens"),
        ({"budget": {"joules": 3}}, "budget.joules"),
        ({"method": "quiet_star", "budget": {"flops": 1.0}}, "budget.flops"),
        ({"method": "quiet_star", "budget": {"seconds": -1}}, "budget.seconds"),
    ],
)
def test_bad_budgets_are_400_naming_the_field(http, body, param) -> None:
    response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
