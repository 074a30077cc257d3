"""What Quiet-STaR decoding needs to know about the served model, derived once per engine.

Why: a real Quiet-STaR checkpoint (served with its mixing head, kernels/quiet_star/model.py)
fixes several things the reference inference does and we must copy: the thought length
(from `n_ahead`), the mixing weight (its head), which ids may never be the talk token (the
reference masks every id >= the base tokenizer's vocab_size, i.e. the thought tokens), BOS
at the start of the context (its tokenizer adds one), and ending on BOS as well as EOS.
Other models get the previous generic behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernels.quiet_star import checkpoint
from server.quiet_star.delimiters import resolve_delimiters

DEFAULT_THOUGHT_TOKENS = 8  # for models that were never trained to think
DEFAULT_MIXING_WEIGHT = 0.1  # measured: keeps SmolLM2 coherent (docs/benchmarks.md)


@dataclass(frozen=True)
class ServedModel:
    has_mixing_head: bool  # a Quiet-STaR checkpoint served by our architecture
    default_thought_tokens: int
    bos_token_id: int | None  # starts every context, when the tokenizer adds it
    added_token_ids: tuple[int, ...]  # masked from the talk token (checkpoint only)
    special_token_ids: frozenset[int]  # special/added ids (single-token delimiters)
    stop_token_ids: tuple[int, ...]  # end the text (besides EOS) when sampled


_cache: dict[int, ServedModel] = {}


def served_model(engine) -> ServedModel:
    """Cached per engine (the model does not change while it runs)."""
    key = id(engine)
    if key not in _cache:
        _cache[key] = _describe(engine)
    return _cache[key]


def _describe(engine) -> ServedModel:
    hf_config = engine.hf_config
    tokenizer = engine.tokenizer
    is_checkpoint = checkpoint.ARCHITECTURE in (getattr(hf_config, "architectures", None) or [])
    vocab_size = int(hf_config.vocab_size)
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    specials |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if not is_checkpoint:
        return ServedModel(False, DEFAULT_THOUGHT_TOKENS, None, (), frozenset(specials), ())
    bos = tokenizer.bos_token_id
    with_special = tokenizer.encode("a")
    adds_bos = bos is not None and bool(with_special) and with_special[0] == bos
    return ServedModel(
        has_mixing_head=True,
        default_thought_tokens=checkpoint.sampled_thought_tokens(hf_config),
        bos_token_id=bos if adds_bos else None,
        # The eval script: `logits[..., tokenizer.vocab_size:] = -inf` before sampling.
        added_token_ids=tuple(range(min(tokenizer.vocab_size, vocab_size), vocab_size)),
        special_token_ids=frozenset(specials),
        # The eval script stops on EOS, BOS or pad (= EOS).
        stop_token_ids=(bos,) if bos is not None else (),
    )


def quiet_star_card(engine) -> dict[str, Any] | None:
    """The resolved Quiet-STaR values `GET /v1/models` reports for a checkpoint (None for other
    models), read from what the engine serves: its config (with our overrides) and tokenizer,
    through the same functions the decode path uses."""
    model = served_model(engine)
    if not model.has_mixing_head:
        return None
    hf_config = engine.hf_config
    start, end = resolve_delimiters(engine.tokenizer, None, None)
    return {
        "thought_tokens": model.default_thought_tokens,
        "n_ahead": checkpoint.n_ahead(hf_config),
        "start_token_ids": list(start),
        "end_token_ids": list(end),
        "init_token_text": checkpoint.INIT_TOKEN_TEXT,
        "init_token_id": getattr(hf_config, checkpoint.KEY_INIT_TOKEN_ID, None),
        "mixing_weight_source": "head",
        "thought_embeddings": getattr(hf_config, checkpoint.KEY_THOUGHT_EMBEDDINGS, "eval"),
        "masked_token_ids": list(model.added_token_ids),
    }
