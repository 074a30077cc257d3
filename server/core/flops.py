"""FLOPs model of a decoder-only transformer, used to charge each request for what it computed.

Why this exists: the gateway compares reasoning methods (baseline, Quiet-STaR, REBASE) at equal
*compute*, not equal tokens, so every engine call is charged the FLOPs of the forward passes it
actually ran. Token counts alone are not enough: a token at position 4000 costs more than one at
position 10 (attention), prefix-cache hits cost nothing, and a prefill computes logits for one
row only.

The per-token rule follows Kaplan et al. 2020 ("Scaling Laws for Neural Language Models",
Table 1), with one deliberate change. For one token that attends to ``n_ctx`` keys::

    2 * N_nonembedding                      # every weight matrix in the blocks: one multiply-add
  + 4 * n_layer * n_ctx * d_attn            # attention: QK^T (2*n_ctx*d_attn) + AV (same)
  + 2 * d_model * vocab_size                # output projection, only where logits are computed

Kaplan counts only QK^T (``2 * n_layer * n_ctx * d_attn``); the AV product costs exactly as much
and does run, so the default ``attention_convention="exact"`` counts both. Pass
``attention_convention="kaplan"`` to reproduce paper numbers. Here ``d_attn = num_heads *
head_dim`` (query heads: with GQA every query head still does its own QK^T and AV), and
``n_ctx`` is the number of keys the token attends to: ``position + 1`` under causal attention.

Counted: matrix multiplies only, 2 FLOPs per multiply-add (the convention of Kaplan and of
``torch.utils.flop_counter.FlopCounterMode``, so tests can check us against it exactly).

Ignored, because they are O(d_model) or O(n_heads * n_ctx) per token against O(d_model^2) for
the matmuls, and every FLOPs convention we compare with ignores them too:

* norms (LayerNorm/RMSNorm), residual adds, activations and the gating product, softmax,
  rotary embeddings, logit soft-capping, embedding lookups (a gather, not a matmul);
* bias adds (1 FLOP per bias element per token). Biases are read from the config and reported
  in ``bias_params`` for transparency, but not charged. ``non_embedding_params`` excludes them,
  like Kaplan's N.

Not modelled (documented limits, each an over- or under-count of a known sign):

* sliding-window attention: every layer is counted as full causal attention, an over-count for
  tokens beyond the window (``from_hf_config`` warns when the config enables a window);
* mixture-of-experts MLPs: ``from_hf_config`` refuses them rather than guess the routing;
* vision/audio encoders of multimodal models: only the text decoder is counted;
* engine-internal waste: recomputation after preemption, speculative-decoding drafts and
  rejected tokens, and the extra logits row vLLM v1 computes (then discards) at the end of each
  non-final chunk of a chunked prefill. Usage statistics do not expose these.

Embedding weights: tied or untied does not matter for compute. The input embedding is a lookup
(free); the output projection is charged ``2 * d_model * vocab_size`` at every position whose
logits are computed, whether or not its weight is shared with the input embedding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

AttentionConvention = Literal["exact", "kaplan"]
PromptLogits = Literal["last", "all", "none"]

_ATTENTION_FACTOR: dict[str, int] = {
    # FLOPs per (layer, key, attention dimension): QK^T and AV are 2 FLOPs per multiply-add each.
    "exact": 4,
    # Kaplan et al. 2020 count QK^T only.
    "kaplan": 2,
}

_MISSING = object()


def _get(config: Any, *names: str, default: Any = _MISSING) -> Any:
    """First non-None value among ``names`` in a PretrainedConfig or a plain dict.

    Why: architectures spell the same quantity differently (``hidden_size`` vs GPT-2's
    ``n_embd``), and a ``config.json`` loaded as a dict has no attribute aliases.
    """
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    if default is _MISSING:
        raise ValueError(f"model config has none of the fields {names}")
    return default


def _flag(config: Any, name: str) -> bool:
    return bool(_get(config, name, default=False))


# Bias parameters per layer, from (config, d_model, d_attn, d_kv, d_ff, gated). Informational only.
_BiasRule = Callable[[Any, int, int, int, int, bool], int]


def _mlp_bias(d_model: int, d_ff: int, gated: bool) -> int:
    # gate and up projections output d_ff each (only up if not gated), down outputs d_model.
    return (2 if gated else 1) * d_ff + d_model


def _bias_from_flags(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    """Llama-family rule: ``attention_bias`` on q, k, v, o; ``mlp_bias`` on the MLP."""
    attention = d_attn + 2 * d_kv + d if _flag(cfg, "attention_bias") else 0
    mlp = _mlp_bias(d, d_ff, gated) if _flag(cfg, "mlp_bias") else 0
    return attention + mlp


def _bias_qkv_only(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    """Qwen2: q, k, v always have biases; o and the MLP never do."""
    return d_attn + 2 * d_kv


def _bias_stablelm(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    return d_attn + 2 * d_kv if _flag(cfg, "use_qkv_bias") else 0


def _bias_all(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    """GPT-2, Phi-1/2: every projection has a bias."""
    return d_attn + 2 * d_kv + d + _mlp_bias(d, d_ff, gated)


def _bias_starcoder2(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    return _bias_all(cfg, d, d_attn, d_kv, d_ff, gated) if _flag(cfg, "use_bias") else 0


def _bias_gpt_neox(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    attention = d_attn + 2 * d_kv + d if _flag(cfg, "attention_bias") else 0
    return attention + _mlp_bias(d, d_ff, gated)


def _bias_mlp_only(cfg: Any, d: int, d_attn: int, d_kv: int, d_ff: int, gated: bool) -> int:
    """GPT-J: bias-free attention, biased MLP."""
    return _mlp_bias(d, d_ff, gated)


# model_type -> (gated MLP?, bias rule). Gated means three d_model x d_ff matrices (gate, up,
# down: SwiGLU/GeGLU); not gated means two (up, down: GPT-2 style). Checked against the
# transformers modeling code (and, for several, against FlopCounterMode in the unit tests).
_ARCHITECTURES: dict[str, tuple[bool, _BiasRule]] = {
    "llama": (True, _bias_from_flags),
    "mistral": (True, _bias_from_flags),
    "qwen2": (True, _bias_qkv_only),
    "qwen3": (True, _bias_from_flags),
    "gemma": (True, _bias_from_flags),
    "gemma2": (True, _bias_from_flags),
    "gemma3_text": (True, _bias_from_flags),
    "phi3": (True, _bias_from_flags),
    "olmo": (True, _bias_from_flags),
    "olmo2": (True, _bias_from_flags),
    "granite": (True, _bias_from_flags),
    "smollm3": (True, _bias_from_flags),
    "stablelm": (True, _bias_stablelm),
    "starcoder2": (False, _bias_starcoder2),
    "gpt2": (False, _bias_all),
    "phi": (False, _bias_all),
    "gpt_neox": (False, _bias_gpt_neox),
    "gptj": (False, _bias_mlp_only),
}

# Config fields whose positive value means the MLP is a mixture of experts.
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _sliding_window_active(config: Any) -> bool:
    layer_types = _get(config, "layer_types", default=None) or ()
    if any("sliding" in str(kind) for kind in layer_types):
        return True
    if layer_types:
        # layer_types is authoritative when present (Qwen2 keeps sliding_window set but lists
        # every layer as full attention when use_sliding_window is false).
        return False
    window = _get(config, "sliding_window", default=None)
    return bool(window) and _get(config, "use_sliding_window", default=True) is not False


def _check_non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class RequestFlops:
    """FLOPs of one engine request (or a sum of them).

    ``executed`` is what the engine actually computed (prefix-cache hits are free);
    ``nominal`` is what the same request would cost with no cache at all. Both are kept because
    nominal does not depend on how warm the cache happened to be (a fair basis for comparing
    methods), while executed is what the hardware really did (capacity, cost).
    """

    executed: int
    nominal: int

    def __post_init__(self) -> None:
        _check_non_negative(executed=self.executed, nominal=self.nominal)
        if self.executed > self.nominal:
            raise ValueError(f"executed ({self.executed}) > nominal ({self.nominal})")

    @property
    def saved(self) -> int:
        """FLOPs the prefix cache saved."""
        return self.nominal - self.executed

    def __add__(self, other: RequestFlops) -> RequestFlops:
        """Sum over the engine calls a method made for one user request."""
        if not isinstance(other, RequestFlops):
            return NotImplemented
        return RequestFlops(self.executed + other.executed, self.nominal + other.nominal)

    def __radd__(self, other: object) -> RequestFlops:
        # Lets the builtin sum() start from 0.
        if other == 0:
            return self
        return NotImplemented


ZERO = RequestFlops(0, 0)


@dataclass(frozen=True)
class FlopsModel:
    """Dimensions of a decoder-only transformer, and the FLOPs of running it.

    Fields (all per model, not per layer unless said):
      n_layer: transformer blocks.
      d_model: residual stream width (hidden_size).
      d_attn: query heads * head_dim (width of Q, of the attention output, and of o_proj's input).
      d_kv: key/value heads * head_dim (width of K and of V; < d_attn under GQA/MQA).
      d_ff: MLP inner width (intermediate_size).
      vocab_size: rows of the output projection.
      gated_mlp: three d_model x d_ff matrices (gate, up, down) if true, two (up, down) if not.
      attention_convention: "exact" (QK^T + AV) or "kaplan" (QK^T only), see the module doc.
      bias_params: bias parameters of the block projections; reported, never charged.

    Frozen so one instance can be shared across requests and threads without copying.
    """

    n_layer: int
    d_model: int
    d_attn: int
    d_kv: int
    d_ff: int
    vocab_size: int
    gated_mlp: bool
    attention_convention: AttentionConvention = "exact"
    bias_params: int = 0

    def __post_init__(self) -> None:
        _check_non_negative(
            n_layer=self.n_layer,
            d_model=self.d_model,
            d_attn=self.d_attn,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            vocab_size=self.vocab_size,
            bias_params=self.bias_params,
        )
        if self.attention_convention not in _ATTENTION_FACTOR:
            raise ValueError(
                f"attention_convention must be one of {sorted(_ATTENTION_FACTOR)}, "
                f"got {self.attention_convention!r}"
            )

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_hf_config(
        cls,
        config: Any,
        *,
        attention_convention: AttentionConvention = "exact",
        gated_mlp: bool | None = None,
    ) -> FlopsModel:
        """Build from a transformers ``PretrainedConfig`` or a ``config.json`` dict.

        Why the model_type table: whether the MLP is gated, and which projections carry biases,
        is decided by the modeling code, not by any config field. Unknown architectures raise
        unless ``gated_mlp`` is given explicitly (biases then follow the Llama-style
        ``attention_bias``/``mlp_bias`` flags). Multimodal configs are reduced to their text
        decoder (``text_config``); mixture-of-experts and encoder-decoder models are refused.
        """
        text_config = _get(config, "text_config", default=None)
        if text_config is not None:
            config = text_config
        model_type = str(_get(config, "model_type", default=""))

        if _flag(config, "is_encoder_decoder"):
            raise NotImplementedError(f"encoder-decoder models are not supported ({model_type})")
        for field in _MOE_FIELDS:
            if (_get(config, field, default=0) or 0) > 0:
                raise NotImplementedError(
                    f"mixture-of-experts model ({model_type}, {field}="
                    f"{_get(config, field)}): the MLP FLOPs depend on the routing "
                    "(experts per token, shared experts), which this model does not count"
                )

        if model_type in _ARCHITECTURES:
            table_gated, bias_rule = _ARCHITECTURES[model_type]
        elif gated_mlp is not None:
            table_gated, bias_rule = gated_mlp, _bias_from_flags
        else:
            raise ValueError(
                f"unknown model_type {model_type!r}: cannot tell whether its MLP is gated. "
                f"Known: {sorted(_ARCHITECTURES)}. Pass gated_mlp=True/False to override."
            )
        gated = table_gated if gated_mlp is None else gated_mlp

        n_layer = int(_get(config, "num_hidden_layers", "n_layer", "num_layers"))
        d_model = int(_get(config, "hidden_size", "n_embd", "d_model"))
        n_heads = int(_get(config, "num_attention_heads", "n_head", "num_heads"))
        n_kv_heads = int(_get(config, "num_key_value_heads", "num_kv_heads", default=n_heads))
        head_dim = _get(config, "head_dim", default=None)
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"hidden_size {d_model} not divisible by {n_heads} heads")
            head_dim = d_model // n_heads
        head_dim = int(head_dim)
        d_ff = _get(config, "intermediate_size", "n_inner", "ffn_dim", default=None)
        if d_ff is None:
            # GPT-2/GPT-J configs carry n_inner=None, meaning 4 * d_model.
            has_n_inner = (
                "n_inner" in config if isinstance(config, Mapping) else hasattr(config, "n_inner")
            )
            if not has_n_inner:
                raise ValueError("model config has no intermediate_size / n_inner / ffn_dim")
            d_ff = 4 * d_model
        d_ff = int(d_ff)
        vocab_size = int(_get(config, "vocab_size"))

        if _sliding_window_active(config):
            warnings.warn(
                f"{model_type}: sliding-window attention is counted as full causal attention "
                "(an over-count for tokens beyond the window)",
                stacklevel=2,
            )

        d_attn = n_heads * head_dim
        d_kv = n_kv_heads * head_dim
        bias_per_layer = bias_rule(config, d_model, d_attn, d_kv, d_ff, gated)
        return cls(
            n_layer=n_layer,
            d_model=d_model,
            d_attn=d_attn,
            d_kv=d_kv,
            d_ff=d_ff,
            vocab_size=vocab_size,
            gated_mlp=gated,
            attention_convention=attention_convention,
            bias_params=n_layer * bias_per_layer,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_path_or_id: str,
        *,
        attention_convention: AttentionConvention = "exact",
        gated_mlp: bool | None = None,
    ) -> FlopsModel:
        """Build from a local model directory or hub id (reads only ``config.json``)."""
        from transformers import AutoConfig  # heavy import, only needed here

        config = AutoConfig.from_pretrained(model_path_or_id)
        return cls.from_hf_config(
            config, attention_convention=attention_convention, gated_mlp=gated_mlp
        )

    # ---------------------------------------------------------------- per-token rates

    @property
    def non_embedding_params(self) -> int:
        """Weights of the block matmuls (Kaplan's N): no embeddings, biases or norms.

        Per layer: q and o are d_model x d_attn, k and v are d_model x d_kv (GQA), and the MLP
        is 3 (gated) or 2 matrices of d_model x d_ff.
        """
        attention = 2 * self.d_model * self.d_attn + 2 * self.d_model * self.d_kv
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_ff
        return self.n_layer * (attention + mlp)

    @property
    def linear_flops_per_token(self) -> int:
        """``2 * N``: FLOPs of every block projection, paid once per computed position."""
        return 2 * self.non_embedding_params

    @property
    def logits_flops_per_token(self) -> int:
        """``2 * d_model * vocab``: the output projection, paid only where logits are computed."""
        return 2 * self.d_model * self.vocab_size

    @property
    def attention_flops_per_key(self) -> int:
        """FLOPs one token spends per key it attends to, summed over layers."""
        return _ATTENTION_FACTOR[self.attention_convention] * self.n_layer * self.d_attn

    def token_flops(self, n_ctx: int, with_logits: bool = True) -> int:
        """FLOPs of one token's forward pass when it attends to ``n_ctx`` keys (itself included).

        ``with_logits=False`` for positions whose logits the engine does not compute (all but
        the last position of a prefill).
        """
        _check_non_negative(n_ctx=n_ctx)
        flops = self.linear_flops_per_token + self.attention_flops_per_key * n_ctx
        if with_logits:
            flops += self.logits_flops_per_token
        return flops

    # ---------------------------------------------------------------- spans and requests

    def span_flops(self, start: int, count: int, logits_tokens: int | None = None) -> int:
        """FLOPs of computing positions ``start .. start+count-1`` in one sequence.

        The token at position p attends (causally) to p + 1 keys, so the keys sum to
        ``count * start + count * (count + 1) / 2``: closed form, so charging a long
        generation costs O(1). ``logits_tokens`` is how many of these positions had their
        logits computed (default: all of them); which ones does not matter for the cost.

        Additive: ``span(a, m) + span(a + m, k) == span(a, m + k)`` (logits split
        accordingly), which is why chunked prefill costs the same as one prefill.
        """
        _check_non_negative(start=start, count=count)
        if logits_tokens is None:
            logits_tokens = count
        if not 0 <= logits_tokens <= count:
            raise ValueError(f"logits_tokens must be in [0, {count}], got {logits_tokens}")
        keys = count * start + count * (count + 1) // 2
        return (
            count * self.linear_flops_per_token
            + keys * self.attention_flops_per_key
            + logits_tokens * self.logits_flops_per_token
        )

    def full_attention_flops(self, seq_len: int) -> int:
        """Attention FLOPs of a ``seq_len`` prefill computed as a *full* square score matrix.

        Dense kernels (HF eager attention: two bmm's of s x s) compute all s * s query-key
        pairs and then mask the upper triangle, and ``FlopCounterMode`` also counts SDPA/flash
        as s * s regardless of ``is_causal``. The causal count we charge is
        ``s * (s + 1) / 2`` pairs: about half. This helper exists to check against those tools.
        """
        _check_non_negative(seq_len=seq_len)
        return self.attention_flops_per_key * seq_len * seq_len

    def prefill_flops(
        self, prompt_tokens: int, cached_tokens: int = 0, *, logits: PromptLogits = "last"
    ) -> RequestFlops:
        """FLOPs of running a prompt through the model once.

        Computed positions are ``[cached, prompt_tokens)``; nominal counts ``[0, prompt)``.
        ``logits`` says which of those positions ran the output projection:

        * ``"last"``: a generation request; vLLM computes logits for the last prompt position
          only (it samples the first generated token from it);
        * ``"all"``: a request with ``prompt_logprobs`` (scoring), logits at every computed
          position;
        * ``"none"``: a pooling/embedding model, which never runs the LM head.

        vLLM always recomputes at least the last prompt token (it needs its hidden state), so
        ``cached_tokens == prompt_tokens`` is clamped to ``prompt_tokens - 1``.
        """
        _check_non_negative(prompt_tokens=prompt_tokens, cached_tokens=cached_tokens)
        if prompt_tokens < 1:
            raise ValueError("prompt_tokens must be >= 1 (vLLM rejects empty prompts)")
        if cached_tokens > prompt_tokens:
            raise ValueError(f"cached_tokens ({cached_tokens}) > prompt_tokens ({prompt_tokens})")
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        cached = min(cached_tokens, prompt_tokens - 1)

        def cost(start: int) -> int:
            count = prompt_tokens - start
            rows = {"last": 1, "all": count, "none": 0}[logits]
            return self.span_flops(start, count, logits_tokens=rows)

        return RequestFlops(executed=cost(cached), nominal=cost(0))

    def request_flops(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        generated_tokens: int,
        *,
        prompt_logits: Literal["last", "all"] = "last",
        rollback_steps: int | None = None,
    ) -> RequestFlops:
        """FLOPs of one vLLM generation request: P prompt tokens, G generated tokens.

        The engine runs forward on the P prompt positions (minus prefix-cache hits); the last
        one yields generated token 1. Each generated token except the last is then fed back,
        one position at a time, so decode computes G - 1 more positions, ``[P, P + G - 1)``,
        each with logits. The last generated token is sampled but never fed, so it costs
        nothing beyond the logits row that produced it.

        Totals: prompt part ``span(cached, P - cached, logits_tokens=1)`` + decode part
        ``span(P, G - 1)``. ``nominal`` is the same with ``cached_tokens = 0``. ``G = 0`` (the
        request was aborted after prefill, or only scored) leaves the prefill alone.
        ``prompt_logits="all"`` charges logits at every computed prompt position
        (``prompt_logprobs``). See ``prefill_flops`` for the cached-token clamp.
        ``rollback_steps``: a Quiet-STaR continuation request (see ``rolled_back_decode_flops``).
        """
        _check_non_negative(generated_tokens=generated_tokens)
        prefill = self.prefill_flops(prompt_tokens, cached_tokens, logits=prompt_logits)
        if rollback_steps:
            decode = self.rolled_back_decode_flops(prompt_tokens, generated_tokens, rollback_steps)
        else:
            decode = self.span_flops(prompt_tokens, max(generated_tokens - 1, 0))
        return prefill + RequestFlops(decode, decode)

    def rolled_back_decode_flops(
        self, prompt_tokens: int, generated_tokens: int, steps: int
    ) -> int:
        """Decode FLOPs of a Quiet-STaR continuation request (kernels/quiet_star/scheduler.py):
        every `steps` generated tokens (start, thought, end, talk) the thought is rolled back,
        so output token k's positions are ``[P + k - 1, P + k + steps - 1)`` (the first one, the
        previous talk token, is the prompt's last position for k = 0): the same G - 1 positions
        as a plain generation, at shorter contexts."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        fed = max(generated_tokens - 1, 0)
        count = min(fed, steps - 1)
        flops = self.span_flops(prompt_tokens, count)
        fed -= count
        k = 1
        while fed > 0:
            count = min(fed, steps)
            flops += self.span_flops(prompt_tokens + k - 1, count)
            fed -= count
            k += 1
        return flops
