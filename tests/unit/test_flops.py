"""Tests of server/core/flops.py: hand counts, closed forms against loops, and torch's FLOP counter.

Why torch's counter: ``FlopCounterMode`` counts every matmul that a real forward pass
dispatches, so agreeing with it on tiny random-weight models of several architectures (GQA,
biases, non-gated MLP, head_dim != hidden/heads) checks the parameter bookkeeping
independently of our own arithmetic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
)
from transformers.pytorch_utils import Conv1D

from server.core.flops import ZERO, FlopsModel, RequestFlops

VOCAB = 100


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    fields: dict[str, object] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.fixture(scope="module")
def llama() -> FlopsModel:
    return FlopsModel.from_hf_config(tiny_llama_config())


# ------------------------------------------------------------------------------- hand counts


def test_dimensions_read_from_llama_config(llama: FlopsModel) -> None:
    # head_dim = 64 / 4 = 16; 2 KV heads (GQA) -> d_kv = 32.
    assert llama == FlopsModel(
        n_layer=2, d_model=64, d_attn=64, d_kv=32, d_ff=128, vocab_size=VOCAB, gated_mlp=True
    )


def test_non_embedding_params_by_hand(llama: FlopsModel) -> None:
    q = o = 64 * 64
    k = v = 64 * 32  # GQA: 2 KV heads of 16
    mlp = 3 * 64 * 128  # gate, up, down
    assert llama.non_embedding_params == 2 * (q + k + v + o + mlp) == 2 * 36864


def test_token_flops_by_hand(llama: FlopsModel) -> None:
    n = 2 * 36864
    logits = 2 * 64 * VOCAB
    attention = 4 * 2 * 64  # QK^T + AV, per key, summed over 2 layers of d_attn 64
    assert llama.token_flops(1) == 2 * n + attention + logits
    assert llama.token_flops(10) == 2 * n + 10 * attention + logits
    assert llama.token_flops(10, with_logits=False) == 2 * n + 10 * attention


def test_kaplan_convention_counts_qk_only() -> None:
    kaplan = FlopsModel.from_hf_config(tiny_llama_config(), attention_convention="kaplan")
    exact = FlopsModel.from_hf_config(tiny_llama_config())
    assert kaplan.attention_flops_per_key == 2 * 2 * 64
    assert exact.token_flops(7) - kaplan.token_flops(7) == 7 * 2 * 2 * 64
    with pytest.raises(ValueError, match="attention_convention"):
        FlopsModel(1, 1, 1, 1, 1, 1, True, attention_convention="paper")  # type: ignore[arg-type]


def _span_by_loop(model: FlopsModel, start: int, count: int, logits_tokens: int) -> int:
    # Which positions carry logits does not change the sum; put them last, like a prefill.
    return sum(
        model.token_flops(p + 1, with_logits=p >= start + count - logits_tokens)
        for p in range(start, start + count)
    )


@pytest.mark.parametrize(
    ("start", "count", "logits_tokens"),
    [(0, 0, 0), (0, 1, 1), (0, 10, 10), (0, 10, 1), (5, 1, 1), (7, 13, 0), (100, 37, 5)],
)
def test_span_flops_equals_loop(
    llama: FlopsModel, start: int, count: int, logits_tokens: int
) -> None:
    assert llama.span_flops(start, count, logits_tokens) == _span_by_loop(
        llama, start, count, logits_tokens
    )


def test_span_flops_logits_default_to_every_token(llama: FlopsModel) -> None:
    assert llama.span_flops(3, 9) == llama.span_flops(3, 9, logits_tokens=9)
    with pytest.raises(ValueError, match="logits_tokens"):
        llama.span_flops(3, 9, logits_tokens=10)


def test_request_flops_with_cache_by_hand(llama: FlopsModel) -> None:
    prompt, cached, generated = 10, 4, 5
    result = llama.request_flops(prompt, cached, generated)
    # Prompt positions 4..9 computed, logits only at 9; then tokens 1..4 are fed back at
    # positions 10..13 (token 5 is sampled from position 13 and never fed).
    executed = sum(llama.token_flops(p + 1, with_logits=p == 9) for p in range(4, 10))
    executed += sum(llama.token_flops(p + 1) for p in range(10, 14))
    nominal = executed + sum(llama.token_flops(p + 1, with_logits=False) for p in range(4))
    assert result == RequestFlops(executed=executed, nominal=nominal)
    assert result.saved == sum(llama.token_flops(p + 1, with_logits=False) for p in range(4))


def test_request_flops_decode_edge_cases(llama: FlopsModel) -> None:
    prefill = llama.prefill_flops(8, 2)
    # G=0 (aborted after prefill) and G=1 (token 1 comes from the prefill) cost the same.
    assert llama.request_flops(8, 2, 0) == prefill
    assert llama.request_flops(8, 2, 1) == prefill
    g2 = llama.request_flops(8, 2, 2)
    assert g2.executed - prefill.executed == llama.token_flops(9)  # token 1 fed at position 8


def test_cached_whole_prompt_is_clamped(llama: FlopsModel) -> None:
    # vLLM always recomputes the last prompt token to get its hidden state.
    assert llama.request_flops(6, 6, 3) == llama.request_flops(6, 5, 3)
    assert llama.prefill_flops(6, 6).executed == llama.token_flops(6)
    with pytest.raises(ValueError, match="cached_tokens"):
        llama.request_flops(6, 7, 3)


@pytest.mark.parametrize(
    "args", [(-1, 0, 0), (5, -1, 0), (5, 0, -1), (0, 0, 0), (0, 0, 3)], ids=str
)
def test_invalid_request_raises(llama: FlopsModel, args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        llama.request_flops(*args)


def test_negative_inputs_raise(llama: FlopsModel) -> None:
    for call in (
        lambda: llama.token_flops(-1),
        lambda: llama.span_flops(-1, 3),
        lambda: llama.span_flops(0, -3),
        lambda: llama.full_attention_flops(-2),
        lambda: FlopsModel(-1, 1, 1, 1, 1, 1, True),
        lambda: RequestFlops(-1, 0),
    ):
        with pytest.raises(ValueError):
            call()


def test_prefill_logits_modes(llama: FlopsModel) -> None:
    logits = llama.logits_flops_per_token
    last = llama.prefill_flops(12, 3, logits="last")
    everywhere = llama.prefill_flops(12, 3, logits="all")  # prompt_logprobs
    pooling = llama.prefill_flops(12, 3, logits="none")  # embedding model: no LM head
    assert last.executed - pooling.executed == logits
    assert everywhere.executed - pooling.executed == 9 * logits
    assert everywhere.nominal - pooling.nominal == 12 * logits
    assert pooling.executed == llama.span_flops(3, 9, logits_tokens=0)
    assert llama.request_flops(12, 3, 4, prompt_logits="all") == everywhere + RequestFlops(
        llama.span_flops(12, 3), llama.span_flops(12, 3)
    )


def test_request_flops_sum() -> None:
    a, b = RequestFlops(3, 5), RequestFlops(10, 10)
    assert a + b == RequestFlops(13, 15)
    assert sum([a, b]) == RequestFlops(13, 15)  # builtin sum starts from 0
    assert sum([a, b], ZERO) == RequestFlops(13, 15)
    assert (a + b).saved == 2
    with pytest.raises(ValueError, match="executed"):
        RequestFlops(6, 5)


# ------------------------------------------------------------------------------- properties

positions = st.integers(min_value=0, max_value=100_000)
counts = st.integers(min_value=0, max_value=5_000)


@given(start=positions, m=counts, k=counts, data=st.data())
def test_span_is_additive(start: int, m: int, k: int, data: st.DataObject) -> None:
    model = FlopsModel(
        n_layer=3, d_model=48, d_attn=64, d_kv=16, d_ff=80, vocab_size=77, gated_mlp=False
    )
    lm = data.draw(st.integers(0, m), label="logits in first span")
    lk = data.draw(st.integers(0, k), label="logits in second span")
    assert model.span_flops(start, m, lm) + model.span_flops(start + m, k, lk) == model.span_flops(
        start, m + k, lm + lk
    )


@given(start=st.integers(0, 300), count=st.integers(0, 60), data=st.data())
def test_span_matches_loop(start: int, count: int, data: st.DataObject) -> None:
    model = FlopsModel.from_hf_config(tiny_llama_config(), attention_convention="kaplan")
    logits_tokens = data.draw(st.integers(0, count))
    assert model.span_flops(start, count, logits_tokens) == _span_by_loop(
        model, start, count, logits_tokens
    )


@given(
    prompt=st.integers(1, 50_000),
    generated=st.integers(0, 50_000),
    cached_fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_executed_at_most_nominal_and_monotone_in_cache(
    prompt: int, generated: int, cached_fractions: tuple[float, float]
) -> None:
    model = FlopsModel.from_hf_config(tiny_llama_config())
    low, high = sorted(int(f * prompt) for f in cached_fractions)
    fewer_hits = model.request_flops(prompt, low, generated)
    more_hits = model.request_flops(prompt, high, generated)
    assert fewer_hits.executed <= fewer_hits.nominal
    assert more_hits.executed <= fewer_hits.executed
    assert (
        more_hits.nominal
        == fewer_hits.nominal
        == model.request_flops(prompt, 0, generated).executed
    )


# ------------------------------------------------------------------------------- torch's counter

ARCHITECTURES: dict[str, PretrainedConfig] = {
    # GQA, untied embeddings, bias on every projection (attention_bias / mlp_bias flags).
    "llama-gqa-bias": tiny_llama_config(attention_bias=True, mlp_bias=True),
    "llama-tied": tiny_llama_config(tie_word_embeddings=True, num_key_value_heads=1),
    # Bias on q, k, v only (hard-coded in the modeling code, no config flag).
    "qwen2": Qwen2Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    ),
    # Non-gated MLP of 4*d (n_inner=None), Conv1D projections (addmm), all biases, MHA.
    "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64),
    # head_dim from the config (24), so d_attn = 96 != hidden_size = 64.
    "gemma3-headdim": Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        vocab_size=VOCAB,
        layer_types=["full_attention", "full_attention"],
    ),
}


def _build(config: PretrainedConfig, attn_implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


def _count(model: torch.nn.Module, seq_len: int) -> dict[str, int]:
    ids = torch.randint(0, VOCAB, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)  # HF computes logits at every position (logits_to_keep=0)
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameters_match_modules(name: str) -> None:
    config = ARCHITECTURES[name]
    flops = FlopsModel.from_hf_config(config)
    projections = [
        module
        for module_name, module in _build(config, "eager").named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and "lm_head" not in module_name
    ]
    assert flops.non_embedding_params == sum(m.weight.numel() for m in projections)
    assert flops.bias_params == sum(m.bias.numel() for m in projections if m.bias is not None)
    # Reading the config.json dict gives the same model as reading the config object.
    assert FlopsModel.from_hf_config(config.to_dict()) == flops


@pytest.mark.parametrize("seq_len", [1, 9])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_matches_flop_counter_eager(name: str, seq_len: int) -> None:
    config = ARCHITECTURES[name]
    flops = FlopsModel.from_hf_config(config)
    counted = _count(_build(config, "eager"), seq_len)
    # Projections and the LM head are mm/addmm (addmm counts the product, not the bias add).
    linear = counted.pop("aten.mm", 0) + counted.pop("aten.addmm", 0)
    assert linear == seq_len * (flops.linear_flops_per_token + flops.logits_flops_per_token)
    # Eager attention is two bmm's per layer (QK^T, AV) over the *full* s x s score matrix,
    # after repeat_kv has expanded GQA to every query head; the causal mask is applied to the
    # scores afterwards, so the masked upper triangle is computed too.
    assert counted == {"aten.bmm": flops.full_attention_flops(seq_len)}
    # What we charge is causal: s(s+1)/2 query-key pairs instead of s^2, so the counter sees
    # exactly the masked triangle, s(s-1)/2 pairs, more than span_flops.
    masked_pairs = seq_len * (seq_len - 1) // 2
    total = linear + counted["aten.bmm"]
    assert total == flops.span_flops(0, seq_len) + masked_pairs * flops.attention_flops_per_key


def test_flop_counter_sdpa_counts_no_causal_saving() -> None:
    # torch registers FLOP formulas for the CUDA SDPA kernels (flash, efficient, cudnn) and
    # counts them as a full s x s product whatever is_causal says; the CPU kernel
    # (_scaled_dot_product_flash_attention_for_cpu) has no formula in torch 2.13, so on CPU
    # attention counts as 0. Either way the linear part is unchanged and the counter never
    # reports the causal count we charge.
    config = ARCHITECTURES["llama-gqa-bias"]
    flops = FlopsModel.from_hf_config(config)
    seq_len = 9
    counted = _count(_build(config, "sdpa"), seq_len)
    linear = counted.pop("aten.mm", 0) + counted.pop("aten.addmm", 0)
    assert linear == seq_len * (flops.linear_flops_per_token + flops.logits_flops_per_token)
    assert sum(counted.values()) in (0, flops.full_attention_flops(seq_len))


# ------------------------------------------------------------------------------- config reading


def test_from_pretrained_reads_saved_config(tmp_path: Path) -> None:
    config = tiny_llama_config(head_dim=32, num_key_value_heads=1)
    config.save_pretrained(tmp_path)
    loaded = FlopsModel.from_pretrained(str(tmp_path))
    assert loaded == FlopsModel.from_hf_config(config)
    assert (loaded.d_attn, loaded.d_kv) == (4 * 32, 32)
    kaplan = FlopsModel.from_pretrained(str(tmp_path), attention_convention="kaplan")
    assert kaplan.attention_convention == "kaplan"


def test_gpt2_config_json_dict(tmp_path: Path) -> None:
    GPT2Config(n_embd=64, n_layer=3, n_head=8, vocab_size=VOCAB).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    model = FlopsModel.from_hf_config(raw)
    assert (model.n_layer, model.d_model, model.d_attn, model.d_kv) == (3, 64, 64, 64)
    assert (model.d_ff, model.gated_mlp) == (4 * 64, False)
    assert model.non_embedding_params == 3 * (4 * 64 * 64 + 2 * 64 * 256)


def test_multimodal_config_uses_text_decoder() -> None:
    text = tiny_llama_config().to_dict()
    assert FlopsModel.from_hf_config({"model_type": "llava", "text_config": text}) == (
        FlopsModel.from_hf_config(text)
    )


def test_mixture_of_experts_is_refused() -> None:
    for config in (Qwen2MoeConfig(), MixtralConfig()):
        with pytest.raises(NotImplementedError, match="mixture-of-experts"):
            FlopsModel.from_hf_config(config)


def test_unknown_architecture_needs_explicit_mlp_kind() -> None:
    raw = tiny_llama_config().to_dict() | {"model_type": "my_new_arch", "attention_bias": True}
    with pytest.raises(ValueError, match="gated_mlp"):
        FlopsModel.from_hf_config(raw)
    model = FlopsModel.from_hf_config(raw, gated_mlp=False)
    assert model.gated_mlp is False
    assert model.bias_params == 2 * (64 + 2 * 32 + 64)  # q, k, v, o biases per layer


def test_sliding_window_warns() -> None:
    mistral = MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    with pytest.warns(UserWarning, match="sliding-window"):
        FlopsModel.from_hf_config(mistral)
    # Qwen2 keeps sliding_window set but disabled: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlopsModel.from_hf_config(ARCHITECTURES["qwen2"])


@pytest.mark.parametrize(("generated", "steps"), [(0, 4), (1, 4), (3, 4), (4, 4), (13, 4), (24, 6)])
def test_rolled_back_generation_charges_each_position_once_at_its_context(
    llama: FlopsModel, generated: int, steps: int
) -> None:
    """Quiet-STaR continuation: output token k runs positions P+k-1 .. P+k+steps-2 (its first
    position, the previous talk token, is the prompt's last for k = 0), token by token."""
    prompt = 37
    positions: list[int] = []
    for g in range(1, generated):  # every generated token but the last is fed back
        k, i = divmod(g - 1, steps)  # output token k, its i-th sampled token (0-based)
        positions.append(prompt + k + i if i < steps - 1 else prompt + k)
    expected = sum(llama.token_flops(p + 1) for p in positions)
    assert llama.rolled_back_decode_flops(prompt, generated, steps) == expected
    plain = llama.request_flops(prompt, 5, generated)
    rolled = llama.request_flops(prompt, 5, generated, rollback_steps=steps)
    assert rolled.executed <= plain.executed  # same positions, shorter contexts
