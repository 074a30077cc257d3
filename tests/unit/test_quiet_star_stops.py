"""Where a Quiet-STaR text ends on a stop token: one rule for `quiet_star` and the steps of
`quiet_star+rebase`, the rule of vLLM's OpenAI server (and so of the baseline method)."""

from __future__ import annotations

from server.quiet_star.decoder import until_stop


def test_the_first_stop_token_is_kept_and_ends_the_tokens() -> None:
    assert until_stop([5, 6, 2, 7, 2], frozenset({2})) == ([5, 6, 2], True)


def test_without_a_stop_token_every_token_is_kept() -> None:
    assert until_stop([5, 6, 7], frozenset({2})) == ([5, 6, 7], False)
    assert until_stop([5, 2], frozenset()) == ([5, 2], False)  # ignore_eos: no stop ids


def test_a_stop_token_first_is_the_whole_piece() -> None:
    assert until_stop([1, 5], frozenset({1, 2})) == ([1], True)
