"""The Quiet-STaR request checks on a Quiet-STaR checkpoint (server/quiet_star/validation.py),
with the checkpoint fixture's tokenizer and no engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernels.quiet_star import checkpoint
from server.core.errors import APIError
from server.core.requests import MethodInput, SamplingSpec
from server.quiet_star.params import QuietStarParams
from server.quiet_star.validation import check_quiet_star_input
from tests.quiet_star_checkpoint import END, START, build_tokenizer


@pytest.fixture(scope="module")
def engine() -> SimpleNamespace:
    tokenizer = build_tokenizer()
    return SimpleNamespace(
        tokenizer=tokenizer,
        eos_token_id=tokenizer.eos_token_id,
        hf_config=SimpleNamespace(
            architectures=[checkpoint.ARCHITECTURE],
            vocab_size=len(tokenizer),
            max_thoughts=10,
            n_ahead_talk=1,
        ),
        max_model_len=512,
        logprobs_mode="raw_logprobs",
    )


def check(engine, **fields) -> QuietStarParams:
    inp = MethodInput(
        [5, 6], "x", 1, SamplingSpec(max_tokens=4), {"quiet_star": QuietStarParams(**fields)}
    )
    check_quiet_star_input(inp, engine, "quiet_star")
    return inp.params["quiet_star"]  # type: ignore[return-value]


@pytest.mark.parametrize("field", ["start_token", "end_token"])
def test_other_delimiters_than_the_checkpoints_are_a_400_naming_the_field(engine, field) -> None:
    with pytest.raises(APIError) as caught:
        check(engine, **{field: "ab"})  # a few plain tokens: valid elsewhere
    assert caught.value.status == 400 and caught.value.param == f"quiet_star.{field}"
    assert "trained embedding" in caught.value.message


def test_the_checkpoints_own_delimiters_named_explicitly_are_accepted(engine) -> None:
    params = check(engine, start_token=START, end_token=END)
    assert params.steps == 1 + 5 + 1 + 1  # one-token delimiters, t = n_ahead - 3
    assert check(engine).steps == params.steps
