"""What a Quiet-STaR checkpoint (ezelikman/quiet-star, e.g. `ezelikman/quietstar-8-ahead`) looks
like, and how we recognise it. Pure Python: the gateway and the engine both import it.

The released checkpoint declares `"architectures": ["MistralForCausalLM"]`, so stock vLLM would
serve it as plain Mistral and drop the mixing head. We recognise it by the Quiet-STaR keys its
config carries and serve it with our own architecture (`kernels/quiet_star/model.py`).
See docs/quiet_star.md for the format and the inference equations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

ARCHITECTURE = "QuietStarMistralForCausalLM"
MODEL_CLASS = "kernels.quiet_star.model:QuietStarMistralForCausalLM"

START_TOKEN, END_TOKEN = "<|startthought|>", "<|endthought|>"

# Keys only a Quiet-STaR config has (modeling_mistral.py reads them in its constructor).
MARKER_KEYS = ("max_thoughts", "use_concat_talk_head", "use_weighted_talk_head")
# The released variant, the only one implemented: an MLP over cat(h_base, h_end) -> scalar w.
REQUIRED_FLAGS = {
    "use_concat_talk_head": True,
    "use_complex_talk_head": True,
    "use_weighted_talk_head": True,
    "use_shallow_talk": False,
    "merged_lm_and_talk_heads": False,
}

# Which vectors embed the start/end thought tokens (the reference has three, see the docs):
# "eval":    embed_tokens[first token of "---"] for both, what the released eval script ends up
#            using (its first forward re-initialises start/end_embedding from "---");
# "trained": start_embedding[0] * 100 and end_embedding[0] * 100, the trained parameters;
# "vocab":   the checkpoint's own embed_tokens rows of the thought ids (the unused `infer()`).
ThoughtEmbeddings = Literal["eval", "trained", "vocab"]
THOUGHT_EMBEDDINGS: tuple[str, ...] = ("eval", "trained", "vocab")
EMBEDDING_SCALE = 100.0  # `embedding_scale` in the reference
INIT_TOKEN_TEXT = "---"  # `initial_start_token` / `initial_end_token` in the reference

# Config keys we add through hf_overrides (prefixed so they never clash with the reference's).
KEY_THOUGHT_EMBEDDINGS = "quiet_star_thought_embeddings"
# The id of INIT_TOKEN_TEXT, resolved and checked by the gateway before the engine starts, so
# the model and the gateway use the one id that was checked.
KEY_INIT_TOKEN_ID = "quiet_star_init_token_id"


def is_quiet_star_config(config: Mapping[str, Any]) -> bool:
    """True for a config saved by the Quiet-STaR training code."""
    return all(key in config for key in MARKER_KEYS)


def check_supported(config: Mapping[str, Any]) -> None:
    """Refuse head variants we do not implement (the released checkpoint is supported)."""
    for key, value in REQUIRED_FLAGS.items():
        if bool(config.get(key, value)) != value:
            raise ValueError(
                f"Quiet-STaR checkpoint with {key}={config.get(key)!r} is not supported "
                f"(only the released talk-head variant: {REQUIRED_FLAGS})"
            )


def n_ahead(config: Mapping[str, Any] | Any) -> int:
    """Forward passes per position at inference. The eval script loads the model with
    `max_thoughts = n_ahead + n_ahead_talk + 1` and `n_ahead_talk = 1`, so the saved
    `max_thoughts` (10 for quietstar-8-ahead) gives back n_ahead (8)."""
    return _get(config, "max_thoughts") - 2


def sampled_thought_tokens(config: Mapping[str, Any] | Any) -> int:
    """Tokens sampled inside one thought: n_ahead passes = text, <start>, t sampled, <end>
    (the end token is forced at pass n_ahead - 2), so t = n_ahead - 3 (5 for 8-ahead).
    Raises ValueError when the config gives no valid thought length: serving it with some
    other length would not be the checkpoint's model."""
    talk = _get(config, "n_ahead_talk", 1)
    if talk != 1:
        raise ValueError(
            f"Quiet-STaR checkpoint with n_ahead_talk={talk}: only n_ahead_talk = 1 (what the "
            "released evaluation uses) is implemented"
        )
    thoughts = _get(config, "max_thoughts")
    ahead = n_ahead(config)
    saved_ahead = _get(config, "n_ahead", ahead)
    if saved_ahead != ahead:
        raise ValueError(
            f"Quiet-STaR checkpoint: max_thoughts={thoughts} gives n_ahead={ahead} "
            f"(max_thoughts - 2 with n_ahead_talk = 1), but its config says n_ahead={saved_ahead}"
        )
    if ahead - 3 < 1:
        raise ValueError(
            f"Quiet-STaR checkpoint: max_thoughts={thoughts} gives n_ahead={ahead}, i.e. "
            f"{ahead - 3} sampled thought tokens (<start> + t + <end> in n_ahead passes); "
            "a thought needs t >= 1, so max_thoughts >= 6"
        )
    return ahead - 3


def _get(config: Mapping[str, Any] | Any, key: str, default: int | None = None) -> int:
    """An integer config value from a config dict or a Hugging Face config object."""
    value = (
        config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    )
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Quiet-STaR checkpoint: {key}={value!r} is not an integer")
    return value


def hf_overrides(
    config: Mapping[str, Any], thought_embeddings: str, init_token_id: int | None = None
) -> dict[str, Any]:
    """What to pass as vLLM's `hf_overrides` so it serves the checkpoint with our model."""
    check_supported(config)
    sampled_thought_tokens(config)  # refuses a config without a valid thought length
    if thought_embeddings not in THOUGHT_EMBEDDINGS:
        raise ValueError(f"thought_embeddings must be one of {THOUGHT_EMBEDDINGS}")
    overrides = {"architectures": [ARCHITECTURE], KEY_THOUGHT_EMBEDDINGS: thought_embeddings}
    if init_token_id is not None:
        overrides[KEY_INIT_TOKEN_ID] = init_token_id
    return overrides
