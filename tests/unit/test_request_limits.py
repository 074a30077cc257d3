"""The per-request work bound (server/core/limits.py): what each method may hold, and the 400."""

from __future__ import annotations

import pytest

from server.api.errors import APIError
from server.core.config import Settings
from server.core.limits import check_request_work
from server.core.requests import MethodInput, RequestWork, SamplingSpec
from server.methods.baseline import Baseline
from server.methods.quiet_star import QuietStar
from server.methods.quiet_star_rebase import QuietStarRebase
from server.methods.rebase import Rebase
from server.quiet_star.params import QuietStarParams
from server.rebase.params import RebaseParams


def check(method, inputs, settings) -> None:
    """What the service does: each prompt's `Method.work`, checked together."""
    check_request_work([method.work(i) for i in inputs], settings)


def inp(n: int = 1, max_tokens: int = 100, **blocks) -> MethodInput:
    return MethodInput([1, 2], "q", n, SamplingSpec(max_tokens=max_tokens), dict(blocks))


def test_each_method_states_its_sequences_and_tokens() -> None:
    assert Baseline().work(inp(n=4)) == RequestWork((("n", 4),), 100)
    assert Baseline().work(inp(n=4)).sequences == 4
    assert Baseline().work(inp(n=4)).tokens == 400

    thinking = QuietStar().work(inp(n=2, quiet_star=QuietStarParams(thought_tokens=8)))
    assert (thinking.sequences, thinking.tokens) == (2, 2 * 100 * (8 + 3))

    tree = Rebase().work(inp(n=3, rebase=RebaseParams(width=16)))
    assert (tree.sequences, tree.tokens) == (48, 48 * 100)
    assert tree.factors == (("n", 3), ("rebase.width", 16))

    both = QuietStarRebase().work(
        inp(n=2, rebase=RebaseParams(width=4), quiet_star=QuietStarParams(thought_tokens=6))
    )
    assert (both.sequences, both.tokens) == (8, 8 * 100 * (6 + 3))


def test_step_start_thinking_is_charged_per_step_not_per_token() -> None:
    params = QuietStarParams(thought_tokens=8, think="step_start")
    # quiet_star: a step may be one token long, so the bound is the every-token one.
    assert QuietStar().work(inp(max_tokens=100, quiet_star=params)).tokens == 100 * 11
    # quiet_star+rebase: one thought per tree node, at most max_depth nodes per path.
    work = QuietStarRebase().work(
        inp(max_tokens=100, rebase=RebaseParams(width=2, max_depth=5), quiet_star=params)
    )
    assert work.tokens == 2 * (100 + 5 * (8 + 2))


def test_within_the_limits_passes() -> None:
    settings = Settings(max_request_sequences=64, max_request_tokens=6400)
    inputs = [inp(n=4, rebase=RebaseParams(width=8))] * 2
    check(Rebase(), inputs, settings)  # 64 sequences, 6400 tokens: at the limit


def test_too_many_sequences_is_a_400_naming_the_limit_and_the_field() -> None:
    settings = Settings(max_request_sequences=64)
    inputs = [inp(n=2, rebase=RebaseParams(width=16))] * 3
    with pytest.raises(APIError) as caught:
        check(Rebase(), inputs, settings)
    error = caught.value
    assert error.status == 400 and error.param == "rebase.width"  # the largest factor
    assert "96 engine sequences" in error.message
    assert "3 prompts x n=2 x rebase.width=16" in error.message
    assert "max_request_sequences=64" in error.message


def test_many_prompts_make_prompt_the_field_to_reduce() -> None:
    settings = Settings(max_request_sequences=16)
    with pytest.raises(APIError) as caught:
        check(Baseline(), [inp(n=2)] * 10, settings)
    assert caught.value.param == "prompt"


def test_too_many_tokens_is_a_400_on_max_tokens() -> None:
    settings = Settings(max_request_tokens=10_000)
    params = QuietStarParams(thought_tokens=16)
    with pytest.raises(APIError) as caught:
        check(QuietStar(), [inp(n=2, max_tokens=300, quiet_star=params)], settings)
    error = caught.value
    assert error.status == 400 and error.param == "max_tokens"
    assert "11400 tokens" in error.message and "max_request_tokens=10000" in error.message
    assert "thought" in error.message


def test_default_limits_reject_the_issue_example_and_accept_common_requests() -> None:
    settings = Settings()
    worst = [inp(n=16, max_tokens=256, rebase=RebaseParams(width=64))] * 32
    with pytest.raises(APIError):
        check(Rebase(), worst, settings)
    check(Rebase(), [inp(n=1, max_tokens=1024, rebase=RebaseParams(width=64))], settings)
    check(Baseline(), [inp(n=16, max_tokens=4096)] * 32, settings)
