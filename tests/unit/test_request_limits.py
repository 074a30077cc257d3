"""The per-request work bound (server/core/limits.py): what each method may hold, and the 400."""

from __future__ import annotations

from types import SimpleNamespace

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
from tests.tiny_model import build_tokenizer


def check(method, inputs, settings) -> None:
    """What the service does: each prompt's `Method.work`, checked together."""
    check_request_work([method.work(i) for i in inputs], settings)


def inp(n: int = 1, max_tokens: int = 100, **blocks) -> MethodInput:
    return MethodInput([1, 2], "q", n, SamplingSpec(max_tokens=max_tokens), dict(blocks))


def thinking(thought_tokens: int, start: int = 1, end: int = 1, **fields) -> QuietStarParams:
    """Parameters as the request checks leave them: thought length and delimiters resolved
    (`start`/`end`: the delimiters' token counts)."""
    params = QuietStarParams(thought_tokens=thought_tokens, **fields)
    return params.resolved(thought_tokens, tuple(range(start)), tuple(range(end)))


def test_each_method_states_its_sequences_and_tokens() -> None:
    assert Baseline().work(inp(n=4)) == RequestWork((("n", 4),), 100)
    assert Baseline().work(inp(n=4)).sequences == 4
    assert Baseline().work(inp(n=4)).tokens == 400

    work = QuietStar().work(inp(n=2, quiet_star=thinking(8)))
    assert (work.sequences, work.tokens) == (2, 2 * 100 * (8 + 3))

    tree = Rebase().work(inp(n=3, rebase=RebaseParams(width=16)))
    assert (tree.sequences, tree.tokens) == (48, 48 * 100)
    assert tree.factors == (("n", 3), ("rebase.width", 16))

    both = QuietStarRebase().work(inp(n=2, rebase=RebaseParams(width=4), quiet_star=thinking(6)))
    assert (both.sequences, both.tokens) == (8, 8 * 100 * (6 + 3))


def test_step_start_thinking_is_charged_per_step_not_per_token() -> None:
    params = thinking(8, think="step_start")
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
    params = thinking(16)
    with pytest.raises(APIError) as caught:
        check(QuietStar(), [inp(n=2, max_tokens=300, quiet_star=params)], settings)
    error = caught.value
    assert error.status == 400 and error.param == "max_tokens"
    assert "11400 tokens" in error.message and "max_request_tokens=10000" in error.message
    assert "thought" in error.message


def test_multi_token_delimiters_are_charged_at_their_real_length() -> None:
    # `<think>`/`</think>` are 3 tokens each on SmolLM2: a step is s + t + e + 1 = t + 7
    # engine positions, not t + 3.
    params = thinking(8, start=3, end=3)
    assert params.steps == 3 + 8 + 3 + 1
    assert QuietStar().work(inp(n=2, quiet_star=params)).tokens == 2 * 100 * 15
    step_start = thinking(8, start=3, end=3, think="step_start")
    work = QuietStarRebase().work(
        inp(rebase=RebaseParams(width=2, max_depth=5), quiet_star=step_start)
    )
    assert work.tokens == 2 * (100 + 5 * (3 + 8 + 3))


def test_a_request_just_over_the_cap_by_the_real_step_length_is_refused() -> None:
    # 100 tokens x (8 + 7) = 1500 positions; the one-token formula (t + 3) said 1100.
    params = thinking(8, start=3, end=3)
    check(QuietStar(), [inp(quiet_star=params)], Settings(max_request_tokens=1500))
    with pytest.raises(APIError) as caught:
        check(QuietStar(), [inp(quiet_star=params)], Settings(max_request_tokens=1499))
    error = caught.value
    assert error.status == 400 and error.param == "max_tokens"
    assert "1500 tokens" in error.message and "max_request_tokens=1499" in error.message
    assert "14 positions each" in error.message


def test_the_request_checks_resolve_the_delimiters_the_work_cap_charges() -> None:
    # What the route runs: the Quiet-STaR checks (which tokenize the delimiters with the
    # served tokenizer), then the work cap. "<t>" is 3 tokens and "</t>" 4 on the tiny
    # tokenizer: a step is 3 + 8 + 4 + 1 = 16 positions, so 100 tokens are 1600 positions.
    tokenizer = build_tokenizer()
    engine = SimpleNamespace(
        tokenizer=tokenizer,
        eos_token_id=tokenizer.eos_token_id,
        hf_config=SimpleNamespace(architectures=["LlamaForCausalLM"], vocab_size=len(tokenizer)),
        max_model_len=1024,
        logprobs_mode="raw_logprobs",
    )
    params = QuietStarParams(thought_tokens=8, start_token="<t>", end_token="</t>")
    request = inp(quiet_star=params)
    QuietStar().check(request, engine)  # type: ignore[arg-type]
    assert request.params["quiet_star"].steps == 16  # type: ignore[attr-defined]
    check(QuietStar(), [request], Settings(max_request_tokens=1600))
    with pytest.raises(APIError) as caught:
        check(QuietStar(), [request], Settings(max_request_tokens=1599))
    assert caught.value.status == 400 and caught.value.param == "max_tokens"
    assert "1600 tokens" in caught.value.message


def test_unresolved_parameters_cannot_be_charged() -> None:
    # The step length depends on the tokenizer: an unchecked request has none to guess.
    with pytest.raises(RuntimeError):
        QuietStarParams(thought_tokens=8).positions(100)


def test_default_limits_reject_the_issue_example_and_accept_common_requests() -> None:
    settings = Settings()
    worst = [inp(n=16, max_tokens=256, rebase=RebaseParams(width=64))] * 32
    with pytest.raises(APIError):
        check(Rebase(), worst, settings)
    check(Rebase(), [inp(n=1, max_tokens=1024, rebase=RebaseParams(width=64))], settings)
    check(Baseline(), [inp(n=16, max_tokens=4096)] * 32, settings)
