"""The Quiet-STaR checkpoint as a vLLM model: Mistral plus its mixing ("talk") head.

What the reference (ezelikman/quiet-star, modeling_mistral.py) adds to Mistral, and how it
maps here (equations and deviations: docs/quiet_star.md):

* `talk_head.0` = Linear(2h, h), ReLU, Linear(h, h), ReLU, Linear(h, 1, bias=False): the
  mixing weight `w = talk_head(cat(h_base, h_end))`, unbounded (no sigmoid, no clamp), where
  both are post-final-norm hidden states. Loaded here; `mixing_weight()` evaluates it for the
  logits processor, which mixes `(1 - w) * z_base + w * z_end` (lm_head is linear without
  bias, so this is the reference's `lm_head((1 - w) h_base + w h_end)`).
* `start_embedding` / `end_embedding` ([2, h]): the thought tokens are not embedded through
  `embed_tokens` in the reference. We write the chosen vectors into the `embed_tokens` rows of
  the two thought ids while loading (zero cost at run time, sharding handled by vLLM's own
  loader); which vectors is the config option `quiet_star_thought_embeddings`
  (kernels/quiet_star/checkpoint.py).
* `compute_logits` publishes each logits row's hidden state to the logits processor
  (kernels/quiet_star/hidden.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.tokenizers import cached_tokenizer_from_config

from kernels.quiet_star import hidden
from kernels.quiet_star.checkpoint import (
    EMBEDDING_SCALE,
    END_TOKEN,
    INIT_TOKEN_TEXT,
    KEY_INIT_TOKEN_ID,
    KEY_THOUGHT_EMBEDDINGS,
    START_TOKEN,
)

EMBED_NAME = "model.embed_tokens.weight"


class QuietStarMistralForCausalLM(MistralForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        size = config.hidden_size
        self.thought_embeddings = getattr(config, KEY_THOUGHT_EMBEDDINGS, "eval")
        # Set by the gateway, which checked it (kernels/quiet_star/checkpoint_setup.py); a bare
        # `vllm serve` replica encodes "---" itself, as the reference does.
        self.init_token_id = getattr(config, KEY_INIT_TOKEN_ID, None)
        # Names and shapes exactly as in the checkpoint (top level of the causal-LM module).
        self.start_embedding = nn.Parameter(torch.zeros(2, size), requires_grad=False)
        self.end_embedding = nn.Parameter(torch.zeros(2, size), requires_grad=False)
        self.talk_head = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(2 * size, size),
                    nn.ReLU(),
                    nn.Linear(size, size),
                    nn.ReLU(),
                    nn.Linear(size, 1, bias=False),
                )
            ]
        )
        self._model_config = vllm_config.model_config

    # -- the mixing head ------------------------------------------------------------------
    @torch.no_grad()
    def mixing_weight(self, h_base: torch.Tensor, h_end: torch.Tensor) -> torch.Tensor:
        """w per row ([rows], float32) from the base and end-of-thought hidden states."""
        dtype = self.talk_head[0][0].weight.dtype
        x = torch.cat([h_base, h_end], dim=-1).to(dtype)
        return self.talk_head[0](x).squeeze(-1).float()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        hidden.publish(hidden_states)
        return super().compute_logits(hidden_states)

    # -- loading ----------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(self._with_thought_rows(weights))
        hidden.attach(self)
        return loaded

    def _with_thought_rows(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Pass every tensor through, but hold `embed_tokens` back until the thought vectors
        are known, then write them into the thought ids' rows (before vLLM shards it)."""
        embed: torch.Tensor | None = None
        thought: dict[str, torch.Tensor] = {}
        for name, tensor in weights:
            if name == EMBED_NAME:
                embed = tensor
                continue
            if name in ("start_embedding", "end_embedding"):
                thought[name] = tensor
            yield name, tensor
        if embed is None:
            return
        if self.thought_embeddings != "vocab":
            embed = self._patch_thought_rows(embed, thought)
        yield EMBED_NAME, embed

    def _patch_thought_rows(self, embed: torch.Tensor, thought: dict[str, torch.Tensor]):
        tokenizer = cached_tokenizer_from_config(self._model_config)
        vocab = tokenizer.get_vocab()
        if START_TOKEN not in vocab or END_TOKEN not in vocab:
            raise ValueError(
                f"the served tokenizer has no {START_TOKEN} / {END_TOKEN}: serve the "
                "checkpoint with the tokenizer it was trained with (--tokenizer)"
            )
        start_id, end_id = vocab[START_TOKEN], vocab[END_TOKEN]
        if self.thought_embeddings == "eval":
            init_id = self.init_token_id
            if init_id is None:
                init_id = tokenizer.encode(INIT_TOKEN_TEXT, add_special_tokens=False)[0]
            start = end = embed[init_id]
        elif self.thought_embeddings == "trained":
            start = thought["start_embedding"][0] * EMBEDDING_SCALE
            end = thought["end_embedding"][0] * EMBEDDING_SCALE
        else:
            raise ValueError(f"unknown {KEY_THOUGHT_EMBEDDINGS}: {self.thought_embeddings!r}")
        embed = embed.clone()
        embed[start_id] = start.to(embed.dtype)
        embed[end_id] = end.to(embed.dtype)
        return embed
