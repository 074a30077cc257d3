"""The tensor math of a Quiet-STaR step, batched over rows (torch reference implementation).

Every function takes a block of logits rows and returns logits that vLLM's sampler then samples
at temperature 1 (the engine request runs at temperature 1; the real temperatures are applied
here, per row). Forcing a token = a row that is -inf everywhere but that token.
"""

from __future__ import annotations

import os

import torch

NEG_INF = float("-inf")


def use_triton() -> bool:
    """The fused Triton mix is opt-in (`THINKSCALE_QUIET_STAR_KERNEL=triton`)."""
    return os.environ.get("THINKSCALE_QUIET_STAR_KERNEL", "torch") == "triton"


def force_tokens(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Rows that can only sample `token_ids[i]`."""
    logits.fill_(NEG_INF)
    logits.scatter_(1, token_ids.view(-1, 1), 0.0)
    return logits


def thought_logits(
    logits: torch.Tensor, temperature: torch.Tensor, banned: torch.Tensor
) -> torch.Tensor:
    """Thought tokens: scaled by the thought temperature, banned ids (start/end/EOS) removed.

    `temperature`: [rows]; `banned`: [rows, k] token ids (repeat an id to pad)."""
    logits = logits / temperature.view(-1, 1)
    logits.scatter_(1, banned, NEG_INF)
    return logits


def talk_logits(
    base_logprobs: torch.Tensor,
    post_logits: torch.Tensor,
    mixing_weight: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    top_k: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """The talk token: mix the base and post-thought distributions, mask, then temperature,
    min-p, top-k, top-p (vLLM's order).

    `(1 - w) * log p_base + w * log p_thought` equals the original's logit-space mix of the
    two heads up to a per-row constant, for any real w (the learned head's w is unbounded), so
    it defines the same distribution. `banned` ([rows, vocab] bool) can never be the talk
    token (the reference masks its thought and added ids). Rows with temperature 0
    become one-hot at the argmax of the masked mix (greedy). Per-row tensors: [rows].
    """
    greedy = temperature <= 0
    if use_triton():
        from kernels.quiet_star.triton_mix import fused_mix

        scaled = fused_mix(base_logprobs, post_logits, mixing_weight, temperature)
        mixed = scaled  # greedy rows are left unscaled by the kernel: same argmax
    else:
        w = mixing_weight.view(-1, 1)
        mixed = (1.0 - w) * base_logprobs + w * torch.log_softmax(post_logits, dim=-1)
        safe_t = torch.where(greedy, torch.ones_like(temperature), temperature).view(-1, 1)
        scaled = mixed / safe_t
    if banned is not None:
        mixed = mixed.masked_fill(banned, NEG_INF)
        scaled = scaled.masked_fill(banned, NEG_INF)
    if min_p is not None:
        scaled = apply_min_p(scaled, min_p)
    if top_k is not None:
        scaled = apply_top_k(scaled, top_k)
    scaled = apply_top_p(scaled, top_p)
    if bool(greedy.any()):
        one_hot = torch.full_like(scaled, NEG_INF)
        one_hot.scatter_(1, mixed.argmax(dim=-1, keepdim=True), 0.0)
        scaled = torch.where(greedy.view(-1, 1), one_hot, scaled)
    return scaled


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below `min_p` times the top probability (0 = off)."""
    if bool((min_p <= 0).all()):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p.view(-1, 1) * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the `top_k` largest logits per row (k <= 0 or >= vocab = off)."""
    vocab = logits.shape[-1]
    k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
    if bool((k >= vocab).all()):
        return logits
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).long().view(-1, 1))
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (at least one)."""
    if bool((top_p >= 1.0).all()):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
    drop_sorted = before >= top_p.view(-1, 1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)
