"""An independent pure-torch implementation of the Quiet-STaR reference inference for one
position, written from ezelikman/quiet-star `modeling_mistral.py` (docs/quiet_star.md) and
sharing no code with the server or the vLLM model.

It runs the reference's *parallel* schedule, not a sequential decode: pass 0 feeds the whole
text; each of the n_ahead - 1 later passes feeds one thought token at every position, attending
to the text causally plus, on a diagonal mask, to that position's own earlier thought tokens,
with positions advanced by one per pass; the last pass feeds <|endthought|>. Then
`w = talk_head(cat(h_base, h_end))` (unbounded), `logits = lm_head((1 - w) h_base + w h_end)`,
ids >= the base tokenizer's vocab_size masked, as the eval script does before sampling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class ReferenceQuietStar:
    def __init__(
        self, directory: Path, *, thought_embeddings: str = "eval", tokenizer=None
    ) -> None:
        """`tokenizer`: the checkpoint's own (its folder) unless given, e.g. the base tokenizer
        with the thought tokens added, as the eval script builds it for the published layout."""
        from transformers import AutoTokenizer

        self.config = json.loads((directory / "config.json").read_text())
        self.w: dict[str, torch.Tensor] = {}
        for file in sorted(directory.glob("*.safetensors")):
            self.w.update({k: v.double() for k, v in load_file(file).items()})
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(directory)
        self.start_id = self.tokenizer.convert_tokens_to_ids("<|startthought|>")
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|endthought|>")
        embed = self.w["model.embed_tokens.weight"]
        scale = 1e2  # embedding_scale
        if thought_embeddings == "eval":
            # forward() re-initialises both from "---" on its first call (start_token_id None)
            init = self.tokenizer.encode("---", add_special_tokens=False)[0]
            self.start_vec = (embed[init] / scale) * scale
            self.end_vec = (embed[init] / scale) * scale
        elif thought_embeddings == "trained":
            self.start_vec = self.w["start_embedding"][0] * scale
            self.end_vec = self.w["end_embedding"][0] * scale
        else:
            self.start_vec, self.end_vec = embed[self.start_id], embed[self.end_id]

    @property
    def n_ahead(self) -> int:
        return self.config["max_thoughts"] - 2

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        eps = self.config["rms_norm_eps"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.w[name]

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hd = x.shape[-1]
        inv = 1.0 / (self.config["rope_theta"] ** (torch.arange(0, hd, 2).double() / hd))
        ang = pos.double()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        rot = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    def _forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Post-norm hidden states of every pass. inputs[j]: [seq, h] embeddings of pass j."""
        c = self.config
        seq = inputs[0].shape[0]
        nh, kvh = c["num_attention_heads"], c["num_key_value_heads"]
        hd = c["hidden_size"] // nh
        causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
        eye = torch.eye(seq, dtype=torch.bool)
        xs = [x.clone() for x in inputs]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            keys: list[torch.Tensor] = []
            values: list[torch.Tensor] = []
            for j, x in enumerate(xs):
                pos = torch.arange(seq) + j  # position ids advance by one per pass
                n = self._rms(x, p + "input_layernorm.weight")
                q = (n @ self.w[p + "self_attn.q_proj.weight"].T).view(seq, nh, hd)
                k = (n @ self.w[p + "self_attn.k_proj.weight"].T).view(seq, kvh, hd)
                v = (n @ self.w[p + "self_attn.v_proj.weight"].T).view(seq, kvh, hd)
                q, k = self._rope(q, pos), self._rope(k, pos)
                keys.append(k.repeat_interleave(nh // kvh, 1))
                values.append(v.repeat_interleave(nh // kvh, 1))
                # mask: text causally (pass 0), then the diagonal of every thought pass so far
                mask = torch.cat([causal] + [eye] * j, dim=1)  # [seq, seq * (j + 1)]
                kk, vv = torch.cat(keys, 0), torch.cat(values, 0)  # [seq * (j + 1), nh, hd]
                scores = torch.einsum("qhd,khd->hqk", q, kk) / math.sqrt(hd)
                scores = scores.masked_fill(~mask[None], float("-inf")).softmax(-1)
                attn = torch.einsum("hqk,khd->qhd", scores, vv).reshape(seq, nh * hd)
                xs[j] = x + attn @ self.w[p + "self_attn.o_proj.weight"].T
            for j, x in enumerate(xs):
                n = self._rms(x, p + "post_attention_layernorm.weight")
                gate = torch.nn.functional.silu(n @ self.w[p + "mlp.gate_proj.weight"].T)
                up = n @ self.w[p + "mlp.up_proj.weight"].T
                xs[j] = x + (gate * up) @ self.w[p + "mlp.down_proj.weight"].T
        return [self._rms(x, "model.norm.weight") for x in xs]

    def talk_logits(
        self, context: list[int], thought: list[int], *, w: float | None = None
    ) -> tuple[torch.Tensor, float]:
        """Masked mixed logits of the token after `context`, given the thought sampled at
        its last position (`thought`: the tokens between start and end), and w there
        (the head's, unless `w` fixes it)."""
        assert len(thought) == self.n_ahead - 3, "n_ahead passes = text, start, thought, end"
        embed = self.w["model.embed_tokens.weight"]
        seq = len(context)
        inputs = [embed[torch.tensor(context)]]
        inputs.append(self.start_vec.expand(seq, -1))
        for token in thought:  # other positions' thoughts cannot reach the last one
            inputs.append(embed[token].expand(seq, -1))
        inputs.append(self.end_vec.expand(seq, -1))
        states = self._forward(inputs)
        h_base, h_end = states[0][-1], states[-1][-1]
        x = torch.cat([h_base, h_end])
        x = torch.relu(x @ self.w["talk_head.0.0.weight"].T + self.w["talk_head.0.0.bias"])
        x = torch.relu(x @ self.w["talk_head.0.2.weight"].T + self.w["talk_head.0.2.bias"])
        if w is None:
            w = float((x @ self.w["talk_head.0.4.weight"].T)[0])
        logits = self.w["lm_head.weight"] @ ((1 - w) * h_base + w * h_end)
        logits[self.tokenizer.vocab_size :] = float("-inf")
        return logits, w
