"""The HF lockstep loop with a cropped KV cache (the speed benchmark's strong baseline) computes
what the straightforward per-token loop computes, batched and left-padded."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.benchmarks.hf_quiet_star import HFQuietStar, QuietStarSettings
from tests.tiny_model import build_tiny_llama

PROMPTS = ["Q: What is 2 + 3? A:", "The quick brown fox jumps over the lazy dog. Hello"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


def settings(t: int) -> QuietStarSettings:
    return QuietStarSettings(
        thought_tokens=t,
        mixing_weight=0.5,
        temperature=0.0,  # greedy talk token
        start_token="<|im_start|>",
        end_token="<|im_end|>",
    )


def test_cropped_lockstep_batch_matches_the_per_token_loop(model_dir: Path) -> None:
    # t = 0: no sampled thought, so both loops are deterministic and must agree token for
    # token; a thought left in the cache (a wrong crop) or a wrong position changes the text.
    ref = HFQuietStar(str(model_dir), settings(0), cache="thought")
    crop = HFQuietStar(str(model_dir), settings(0), cache="crop")
    expected = [ref.generate(p, 8).token_ids for p in PROMPTS]
    assert [s.token_ids for s in crop.generate_batch(PROMPTS, 8)] == expected


def test_cropped_loop_runs_t_plus_3_positions_per_token(model_dir: Path) -> None:
    crop = HFQuietStar(str(model_dir), settings(3), cache="crop")
    (seq,) = crop.generate_batch(PROMPTS[:1], 5)
    assert len(seq.token_ids) == 5 and all(len(th) == 3 for th in seq.thoughts)
    # prefill, then per output token [talk, start] + 3 thoughts... the last with end: t + 3
    assert seq.forward_positions == seq.prompt_tokens + 5 * (3 + 3) - 1
    assert seq.model_calls == 1 + 5 * (3 + 1)
