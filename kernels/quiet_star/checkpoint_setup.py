"""How the gateway serves the model it was given: the tokenizer, and for a Quiet-STaR checkpoint
the architecture override and every value that follows from the checkpoint, checked before
the engine starts.

Why check here: a Quiet-STaR checkpoint served with the wrong tokenizer, without its thought
tokens, or with a thought length its config does not give, still *runs* (as plain Mistral, with
`<think>` delimiters, or with wrong thought embeddings) and silently produces another model's
text. So every such case stops the start with a message naming what is wrong, and the values
that were resolved are logged once and reported by `GET /v1/models` (docs/quiet_star.md).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels.quiet_star import checkpoint
from kernels.quiet_star.plugin import register as register_quiet_star_model
from kernels.quiet_star.tokenizer import resolve_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSetup:
    tokenizer: str | None  # vLLM's `tokenizer` argument (None: the model's own)
    hf_overrides: dict[str, Any] | None  # a Quiet-STaR checkpoint: our architecture
    quiet_star: dict[str, Any] | None  # the resolved Quiet-STaR values (checkpoint only)


def model_setup(settings, model_path: str) -> ModelSetup:
    """Resolved once per distinct input (the gateway asks before and while starting the
    engine); raises ValueError with the reason when the model cannot be served faithfully."""
    return _model_setup(
        model_path,
        settings.tokenizer,
        settings.quiet_star_thought_embeddings,
        Path(settings.cache_dir),
        bool(settings.trust_remote_code),
    )


def quiet_star_overrides(settings, model_path: str) -> dict | None:
    """A Quiet-STaR checkpoint says `MistralForCausalLM`; it is served with our architecture,
    which loads its mixing head and thought embeddings (docs/quiet_star.md). Recognised by the
    Quiet-STaR keys of its config.json and checked against the served tokenizer (above); other
    models are served as they are (None). The in-process engine passes these to vLLM, the remote
    engine applies them to the config it reads, so both see the model the replicas serve."""
    overrides = model_setup(settings, model_path).hf_overrides
    if overrides is not None:
        register_quiet_star_model()  # here; engine processes: kernels/quiet_star/plugin.py
    return overrides


@functools.cache
def _model_setup(
    model_path: str,
    tokenizer: str | None,
    thought_embeddings: str,
    cache_dir: Path,
    trust_remote_code: bool,
) -> ModelSetup:
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(
            model_path, trust_remote_code=trust_remote_code
        )
    except OSError:
        # Not a Hugging Face model folder/id: vLLM reports it properly.
        return ModelSetup(tokenizer, None, None)
    source = resolve_tokenizer(
        model_path, tokenizer, cache_dir, trust_remote_code=trust_remote_code
    )
    if not checkpoint.is_quiet_star_config(config):
        return ModelSetup(source, None, None)
    resolved = resolve_checkpoint(
        config, _load_tokenizer(source or model_path, trust_remote_code), thought_embeddings
    )
    resolved["tokenizer"] = source or model_path
    overrides = checkpoint.hf_overrides(config, thought_embeddings, resolved["init_token_id"])
    logger.info(
        "serving a Quiet-STaR checkpoint with its mixing head (%s): %s",
        model_path,
        json.dumps(resolved),
    )
    return ModelSetup(source, overrides, resolved)


def resolve_checkpoint(
    config: dict[str, Any], tokenizer, thought_embeddings: str
) -> dict[str, Any]:
    """The values the checkpoint's inference depends on, checked against the tokenizer it will
    be served with. Raises ValueError naming the first thing that does not hold."""
    checkpoint.check_supported(config)
    if thought_embeddings not in checkpoint.THOUGHT_EMBEDDINGS:
        raise ValueError(f"thought_embeddings must be one of {checkpoint.THOUGHT_EMBEDDINGS}")
    thought_tokens = checkpoint.sampled_thought_tokens(config)
    vocab_size = int(config["vocab_size"])
    vocab = tokenizer.get_vocab()
    ids = {}
    # The reference adds <|startthought|> then <|endthought|> after the base vocabulary.
    for token, wanted in (
        (checkpoint.START_TOKEN, vocab_size - 2),
        (checkpoint.END_TOKEN, vocab_size - 1),
    ):
        if token not in vocab:
            raise ValueError(
                f"the tokenizer has no {token}: a Quiet-STaR checkpoint needs its thought tokens "
                "(serve it with --tokenizer, the base tokenizer it was trained with)"
            )
        if vocab[token] != wanted:
            raise ValueError(
                f"{token} is id {vocab[token]} in the tokenizer, but the checkpoint's "
                f"{vocab_size}-token vocabulary puts it at {wanted}: not the tokenizer the "
                "checkpoint was trained with"
            )
        ids[token] = wanted
    base_vocab = int(tokenizer.vocab_size)
    if base_vocab > vocab_size - 2:
        raise ValueError(
            f"the tokenizer's base vocabulary ({base_vocab} tokens) includes the thought tokens; "
            f"they must be added tokens on top of it (ids {vocab_size - 2}, {vocab_size - 1}) "
            "so that they are masked from the text as the reference does"
        )
    init_ids = list(tokenizer.encode(checkpoint.INIT_TOKEN_TEXT, add_special_tokens=False))
    init_ok = len(init_ids) == 1 and init_ids[0] < base_vocab
    if not init_ok and thought_embeddings == "eval":
        raise ValueError(
            f"{checkpoint.INIT_TOKEN_TEXT!r} encodes to {init_ids} with this tokenizer, not to "
            f"one token of its {base_vocab}-token base vocabulary: the 'eval' thought "
            "embeddings are that token's embedding (Mistral: '▁---', id 11940), so serve the "
            "checkpoint with the base tokenizer it was trained with (--tokenizer), or choose "
            "--quiet-star-thought-embeddings trained"
        )
    return {
        "thought_tokens": thought_tokens,
        "n_ahead": checkpoint.n_ahead(config),
        "start_token": checkpoint.START_TOKEN,
        "start_token_id": ids[checkpoint.START_TOKEN],
        "end_token": checkpoint.END_TOKEN,
        "end_token_id": ids[checkpoint.END_TOKEN],
        "init_token_text": checkpoint.INIT_TOKEN_TEXT,
        "init_token_id": init_ids[0] if init_ok else None,
        "mixing_weight_source": "head",
        "thought_embeddings": thought_embeddings,
        "vocab_size": vocab_size,
        "base_vocab_size": base_vocab,
    }


def _load_tokenizer(source: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer of {source!r}: {exc}") from exc
