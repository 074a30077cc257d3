"""End-to-end: the vLLM STEP-pooling PRM on tiny random checkpoints, checked against transformers.

One engine for the default run: a tiny Math-Shepherd-style causal LM (the tiny test tokenizer plus
the step tag "ки" as one token). The Qwen2.5-Math-PRM style needs a second engine (a
``Qwen2ForProcessRewardModel`` checkpoint), so its test is ``slow``: `make test-all` runs it,
`make test` does not. The policy judge is not tested here: this engine is pooling-only and cannot
generate (tests/unit/test_reward_models.py covers the judge against a fake engine).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from prometheus_client import REGISTRY
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2Model

from server.core.usage import UsageMeter
from server.rewards.base import check_scores
from server.rewards.vllm_prm import VllmPrmConfig, VllmProcessRewardModel
from tests.tiny_model import build_tokenizer

pytestmark = pytest.mark.e2e

QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips?"
PATHS = [
    ["48/2 = 24 clips in May.", "48 + 24 = 72. The answer is 72."],
    ["48/2 = 24 clips in May.", "48 + 24 = 73. The answer is 73."],
    ["She sold 48 clips."],
    ["0 1 2 3", "4 5 6", "7 8 9", "The answer is 42."],
]


def _tiny_config(tokenizer, config_cls, **extra):
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_math_shepherd(directory: Path) -> Path:
    """The tiny test Llama, with "ки" added to the vocabulary as one ordinary token."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["ки"])
    config = _tiny_config(tokenizer, LlamaConfig, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def engine_config(model: Path, style: str = "math_shepherd") -> VllmPrmConfig:
    return VllmPrmConfig(
        model=str(model),
        style=style,  # type: ignore[arg-type]
        dtype="float32",
        block_size=32,
        kv_cache_gib=1,
        max_model_len=512,
        enforce_eager=True,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shepherd(tmp_path_factory) -> AsyncIterator[tuple[VllmProcessRewardModel, Path]]:
    model_dir = build_tiny_math_shepherd(tmp_path_factory.mktemp("tiny-math-shepherd"))
    prm = VllmProcessRewardModel(engine_config(model_dir)).start()
    yield prm, model_dir
    prm.shutdown()


@functools.cache
def _transformers_model(model_dir: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference_scores(model_dir: Path, ids: list[int], tag_id: int, labels: tuple[int, int]):
    """The Math-Shepherd card's computation in transformers: softmax over the LM logits of
    ("+", "-") at every tag position, P("+")."""
    model = _transformers_model(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    at_tags = logits[torch.tensor(ids) == tag_id][:, list(labels)]
    return at_tags.softmax(dim=-1)[:, 0].tolist()


async def test_prompt_is_the_card_format(shepherd) -> None:
    prm, model_dir = shepherd
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = f"{QUESTION} Step 1: {PATHS[0][0]} ки\nStep 2: {PATHS[0][1]} ки"
    assert prm.prompt_token_ids(QUESTION, PATHS[0]) == tokenizer.encode(text)
    assert prm.step_tag_id == tokenizer.convert_tokens_to_ids("ки")
    assert prm.label_token_ids == tuple(tokenizer.encode("+ -", add_special_tokens=False))


async def test_scores_equal_transformers_and_charge_the_meter(shepherd) -> None:
    prm, model_dir = shepherd
    meter = UsageMeter(policy_flops=prm.flops)
    scores = await prm.score(QUESTION, PATHS, meter=meter)
    check_scores(PATHS, scores)
    assert prm.label_token_ids is not None and prm.step_tag_id is not None
    for steps, got in zip(PATHS, scores, strict=True):
        ids = prm.prompt_token_ids(QUESTION, steps)
        expected = reference_scores(model_dir, ids, prm.step_tag_id, prm.label_token_ids)
        assert len(expected) == len(steps)
        assert got == pytest.approx(expected, abs=1e-4)
    # Different last steps get different scores (the engine really read each path).
    assert scores[0][-1] != scores[1][-1]
    cost = meter.component("reward")
    assert cost.engine_calls == len(PATHS)
    assert cost.prompt_tokens == sum(len(prm.prompt_token_ids(QUESTION, p)) for p in PATHS)
    assert cost.generated_tokens == 0
    assert cost.flops.executed > 0 and meter.reward_flops is prm.flops
    assert meter.component("policy").engine_calls == 0


async def test_the_prm_engines_own_counter_equals_its_charge(shepherd) -> None:
    """The PRM engine's tokens, checked against a stat logger of its own (vLLM's are off on
    this engine): what the meter charged the reward component is what the engine counted."""
    prm, _ = shepherd

    def counted() -> float:
        return REGISTRY.get_sample_value("thinkscale_prm_iteration_tokens_total") or 0.0

    before = counted()
    meter = UsageMeter(policy_flops=prm.flops)
    await prm.score(QUESTION, [*PATHS, ["A path the engine has not seen."]], meter=meter)
    charged = meter.component("reward").engine_counted_tokens
    for _ in range(100):  # vLLM's loggers run after the outputs are handed over
        if counted() - before == charged:
            break
        await asyncio.sleep(0.05)
    assert counted() - before == charged > 0


async def test_batching_and_repeats_do_not_change_scores(shepherd) -> None:
    prm, _ = shepherd
    alone = await prm.score(QUESTION, [PATHS[3]])
    meter = UsageMeter(policy_flops=prm.flops)
    batch = await prm.score(QUESTION, [PATHS[3]] * 6 + PATHS, meter=meter)
    for scores in batch[:6]:
        assert scores == pytest.approx(alone[0], abs=1e-5)
    # vLLM 0.32: STEP pooling turns prefix caching off, so repeats recompute everything.
    assert meter.component("reward").cached_tokens == 0


async def test_a_path_longer_than_the_engine_is_cut_and_filled(shepherd) -> None:
    prm, model_dir = shepherd
    steps = [f"Step text number {k} says 48/2 = 24 and 48 + 24 = 72." for k in range(40)]
    assert len(prm.prompt_token_ids(QUESTION, steps)) == 512  # cut at max_model_len
    scores = await prm.score(QUESTION, [steps])
    check_scores([steps], scores)
    ids = prm.prompt_token_ids(QUESTION, steps)
    expected = reference_scores(model_dir, ids, prm.step_tag_id, prm.label_token_ids)
    seen = len(expected)
    assert 0 < seen < len(steps)
    assert scores[0][:seen] == pytest.approx(expected, abs=1e-4)
    assert scores[0][seen:] == [scores[0][seen - 1]] * (len(steps) - seen)


# --- Qwen2.5-Math-PRM style: a second engine, only with -m slow ---------------------------------


def build_tiny_qwen_prm(directory: Path) -> tuple[Path, Qwen2Model, dict[str, torch.Tensor]]:
    """A tiny ``Qwen2ForProcessRewardModel``: a random Qwen2 body and a random 2-label head
    (Linear-ReLU-Linear, as the real checkpoint), "<extra_0>" a special token."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<extra_0>"], special_tokens=True)
    config = _tiny_config(tokenizer, Qwen2Config, tie_word_embeddings=False, num_labels=2)
    torch.manual_seed(0)
    body = Qwen2Model(config).to(torch.float32).eval()
    hidden = config.hidden_size
    head = {
        "score.0.weight": torch.randn(hidden, hidden) * 0.2,
        "score.0.bias": torch.randn(hidden) * 0.1,
        "score.2.weight": torch.randn(2, hidden) * 0.5,
        "score.2.bias": torch.randn(2) * 0.1,
    }
    weights = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()} | head
    save_file(weights, str(directory / "model.safetensors"))
    config_dict = config.to_dict() | {
        "architectures": ["Qwen2ForProcessRewardModel"],
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config_dict))
    tokenizer.save_pretrained(directory)
    return directory, body, head


@pytest.mark.slow
async def test_qwen_prm_style_equals_transformers(tmp_path) -> None:
    model_dir, body, head = build_tiny_qwen_prm(tmp_path / "tiny-qwen-prm")
    prm = VllmProcessRewardModel(engine_config(model_dir, "qwen_prm")).start()
    try:
        meter = UsageMeter(policy_flops=prm.flops)
        scores = await prm.score(QUESTION, PATHS, meter=meter)
        check_scores(PATHS, scores)
        for steps, got in zip(PATHS, scores, strict=True):
            ids = prm.prompt_token_ids(QUESTION, steps)
            with torch.no_grad():
                states = body(torch.tensor([ids])).last_hidden_state[0]
                hidden = torch.relu(states @ head["score.0.weight"].T + head["score.0.bias"])
                logits = hidden @ head["score.2.weight"].T + head["score.2.bias"]
            at_tags = logits[torch.tensor(ids) == prm.step_tag_id].double()
            assert got == pytest.approx(at_tags.softmax(dim=-1)[:, 1].tolist(), abs=1e-4)
        assert meter.component("reward").engine_calls == len(PATHS)
    finally:
        prm.shutdown()
