"""The side channel between the Quiet-STaR model and the Quiet-STaR logits processor.

Why: a vLLM logits processor sees only logits, but the checkpoint's mixing weight is a function
of two hidden states. Both objects live in the same worker process, and vLLM's V1 model runner
computes the logits of a step (`model.compute_logits(hidden_states[logits_indices])`, one row
per request in input-batch order) and then hands exactly those rows, in that order, to the
sampler that runs the logits processors; Model Runner V2 does the same (`sample`:
`compute_logits(hidden_states[logits_indices])`, rows in batch order). So the model publishes
the post-norm hidden state of each logits row here, and the processor reads row i of the latest
publication for logits row i. A shape check guards the correspondence.
"""

from __future__ import annotations

import weakref
from typing import Protocol

import torch


class MixingHead(Protocol):
    def mixing_weight(self, h_base: torch.Tensor, h_end: torch.Tensor) -> torch.Tensor: ...


_head: weakref.ReferenceType | None = None
_hidden: torch.Tensor | None = None


def attach(model: MixingHead) -> None:
    """Called by the model once its weights are loaded: this worker serves a mixing head."""
    global _head
    _head = weakref.ref(model)


def head() -> MixingHead | None:
    return _head() if _head is not None else None


def publish(hidden_states: torch.Tensor) -> None:
    """The hidden states whose logits the sampler is about to see (rows = logits rows)."""
    global _hidden
    _hidden = hidden_states


def latest(rows: int) -> torch.Tensor:
    """The published hidden states, checked to match a logits tensor of `rows` rows."""
    if _hidden is None or _hidden.shape[0] != rows:
        got = None if _hidden is None else tuple(_hidden.shape)
        raise RuntimeError(
            f"Quiet-STaR: published hidden states {got} do not match {rows} logits rows; "
            "the model-runner layout this relies on changed (see kernels/quiet_star/hidden.py)"
        )
    return _hidden
