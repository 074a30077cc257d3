"""The fused Triton talk-token mix matches the torch reference (Triton's CPU interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch
    from kernels.quiet_star import tensor_ops
    from kernels.quiet_star.triton_mix import fused_mix

    torch.manual_seed(0)
    rows, vocab = 5, 3000  # not a multiple of the block: exercises the masks
    base = torch.randn(rows, vocab).log_softmax(-1)
    post = torch.randn(rows, vocab) * 3
    w = torch.tensor([0.0, 0.3, 0.5, 1.0, 0.7])
    t = torch.tensor([1.0, 0.7, 0.0, 1.3, 2.0])
    ours = fused_mix(base, post, w, t)
    mixed = (1 - w[:, None]) * base + w[:, None] * post.log_softmax(-1)
    safe_t = torch.where(t > 0, t, torch.ones_like(t))[:, None]
    assert torch.allclose(ours, mixed / safe_t, atol=1e-5), (ours - mixed / safe_t).abs().max()
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 1.0])
    reference = tensor_ops.talk_logits(base, post, w, t, top_p)
    import os
    os.environ["THINKSCALE_QUIET_STAR_KERNEL"] = "triton"
    fused = tensor_ops.talk_logits(base, post, w, t, top_p)
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(fused))
    assert torch.allclose(reference[finite], fused[finite], atol=1e-5)
    print("ok")
    """
)


def test_fused_mix_matches_torch_reference_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
