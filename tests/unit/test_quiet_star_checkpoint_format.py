"""Recognising a Quiet-STaR checkpoint and deriving its inference settings from its config."""

from __future__ import annotations

import json

import pytest

from kernels.quiet_star import checkpoint
from tests.quiet_star_checkpoint import QUIET_STAR_KEYS, build_quiet_star_checkpoint


def test_the_tiny_checkpoint_has_the_reference_format(tmp_path) -> None:
    directory = build_quiet_star_checkpoint(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert checkpoint.is_quiet_star_config(config)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    extra = {k for k in index["weight_map"] if not k.startswith(("model.", "lm_head"))}
    assert extra == {
        "start_embedding", "end_embedding",
        "talk_head.0.0.weight", "talk_head.0.0.bias", "talk_head.0.2.weight",
        "talk_head.0.2.bias", "talk_head.0.4.weight",
    }  # fmt: skip
    overrides = checkpoint.hf_overrides(config, "eval")
    assert overrides["architectures"] == [checkpoint.ARCHITECTURE]


def test_thought_length_comes_from_max_thoughts() -> None:
    assert checkpoint.n_ahead(QUIET_STAR_KEYS) == 8  # quietstar-8-ahead
    assert checkpoint.sampled_thought_tokens(QUIET_STAR_KEYS) == 5  # <start> + 5 + <end>


def test_plain_mistral_is_not_a_quiet_star_checkpoint() -> None:
    assert not checkpoint.is_quiet_star_config({"model_type": "mistral", "vocab_size": 32000})


@pytest.mark.parametrize("flag", ["use_shallow_talk", "use_weighted_talk_head"])
def test_unimplemented_head_variants_are_refused(flag) -> None:
    config = {**QUIET_STAR_KEYS, flag: not QUIET_STAR_KEYS[flag]}
    with pytest.raises(ValueError, match=flag):
        checkpoint.hf_overrides(config, "eval")
