"""Optional fused Triton kernel for the talk-token mix (one program per row).

Fuses `log_softmax(post)`, the mix with the saved base log-probabilities and the temperature
into three passes over the vocabulary without materialising intermediates; top-p and greedy
stay in torch (`tensor_ops`), which sorts anyway. Checked against the torch reference under
`TRITON_INTERPRET=1` (tests/unit/test_triton_mix.py); opt in on a GPU with
`THINKSCALE_QUIET_STAR_KERNEL=triton` in the engine's environment.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _mix_kernel(base_ptr, post_ptr, out_ptr, w_ptr, inv_t_ptr, vocab, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base_row = base_ptr + row * stride
    post_row = post_ptr + row * stride
    out_row = out_ptr + row * stride
    w = tl.load(w_ptr + row)
    inv_t = tl.load(inv_t_ptr + row)
    # pass 1: max of the post-thought logits (numerically safe log-softmax)
    running_max = float("-inf")
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(post_row + offs, mask=offs < vocab, other=float("-inf"))
        running_max = tl.maximum(running_max, tl.max(x, axis=0))
    # pass 2: log of the normaliser
    total = 0.0
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(post_row + offs, mask=offs < vocab, other=float("-inf"))
        total += tl.sum(tl.exp(x - running_max), axis=0)
    log_norm = running_max + tl.log(total)
    # pass 3: mix and scale
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        post = tl.load(post_row + offs, mask=mask, other=0.0)
        base = tl.load(base_row + offs, mask=mask, other=0.0)
        mixed = (1.0 - w) * base + w * (post - log_norm)
        tl.store(out_row + offs, mixed * inv_t, mask=mask)


def fused_mix(
    base_logprobs: torch.Tensor,
    post_logits: torch.Tensor,
    mixing_weight: torch.Tensor,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """`((1 - w) * base + w * log_softmax(post)) / T` per row; T <= 0 rows are left unscaled."""
    base = base_logprobs.contiguous().float()
    post = post_logits.contiguous().float()
    out = torch.empty_like(post)
    safe_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    rows, vocab = post.shape
    _mix_kernel[(rows,)](
        base, post, out, mixing_weight.float().contiguous(), (1.0 / safe_t).contiguous(),
        vocab, post.stride(0), BLOCK=BLOCK,
    )  # fmt: skip
    return out
