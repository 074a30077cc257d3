"""Engine-backed reward models without an engine: the Yes/No math of the policy judge, the PRM's
tag-position -> step-score mapping and prompt recipes, the vLLM configuration, the registry."""

from __future__ import annotations

import asyncio
import math
import os
from types import SimpleNamespace

import pytest
import torch

from server.core.flops import FlopsModel
from server.core.usage import UsageMeter
from server.engines.vllm_startup import engine_environment, environment
from server.rewards import REWARD_MODELS, build_reward_model
from server.rewards.arithmetic import ArithmeticRewardModel
from server.rewards.base import check_scores
from server.rewards.policy_judge import (
    JUDGE_INSTRUCTION,
    LruCache,
    PolicyJudgeRewardModel,
    build_judge_prompt,
    single_token_ids,
    yes_probability,
)
from server.rewards.vllm_prm import (
    VllmPrmConfig,
    VllmProcessRewardModel,
    align_step_scores,
    build_prm_engine_args,
    format_math_shepherd,
    format_qwen_prm,
    label_probabilities,
    prm_config_from_settings,
    resolve_label_token_ids,
    resolve_step_tag_id,
)
from tests.tiny_model import build_tokenizer

FLOPS = FlopsModel.from_hf_config(
    {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
)
OTHER_FLOPS = FlopsModel(4, 128, 128, 128, 256, 100, True)


class FakeTokenizer:
    """Words from a fixed table are one token each; anything else is one token per character."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if text in self.table:
            return [self.table[text]]
        return [1000 + ord(c) % 1000 for c in text]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        inverse = {v: k for k, v in self.table.items()}
        return [inverse[i] for i in ids]


# The fake policy: " Yes" = 1, "Yes" = 2, " No" = 3, "No" = 4 (the other spellings: several tokens).
JUDGE_TABLE = {" Yes": 1, "Yes": 2, " No": 3, "No": 4}


class FakePolicyEngine:
    """Implements what the judge uses of server.engines.inprocess.Engine; answers from
    ``logprobs_for``."""

    def __init__(self, logprobs_for, max_model_len: int = 4096, max_logprobs: int = 20) -> None:
        self.tokenizer = FakeTokenizer(JUDGE_TABLE)
        self.logprobs_for = logprobs_for  # prompt text -> {token_id: logprob}
        self.max_model_len = max_model_len
        self.flops = FLOPS
        self.max_logprobs = max_logprobs
        self.calls: list[tuple[list[int], object, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def generate(self, prompt_token_ids, params, meter, *, component="policy"):
        self.calls.append((prompt_token_ids, params, component))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # every request of a wave is in flight before any returns
            text = "".join(map(chr, prompt_token_ids))
            logprobs = self.logprobs_for(text)
            yield SimpleNamespace(outputs=[SimpleNamespace(logprobs=[logprobs])])
        finally:
            self.in_flight -= 1
            meter.record_generation(
                prompt_tokens=len(prompt_token_ids),
                cached_tokens=0,
                generated_tokens=1,
                component=component,
            )


def lp(p: float) -> float:
    return math.log(p)


# --- policy judge: the probability math ---------------------------------------------------------


def test_yes_probability_sums_spellings_and_normalises() -> None:
    logprobs = {1: lp(0.3), 2: lp(0.1), 3: lp(0.2), 99: lp(0.4)}
    assert yes_probability(logprobs, [1, 2], [3, 4]) == pytest.approx(0.4 / 0.6)


def test_yes_probability_reads_vllm_logprob_objects() -> None:
    from vllm.logprobs import Logprob

    logprobs = {1: Logprob(logprob=lp(0.6), rank=1), 3: Logprob(logprob=lp(0.2), rank=2)}
    assert yes_probability(logprobs, [1], [3]) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ({}, 0.5),  # neither in the top-k
        ({99: lp(0.9)}, 0.5),
        ({1: lp(0.2)}, 1.0),  # No outside the top-k counts 0
        ({3: lp(0.2)}, 0.0),
        ({1: -math.inf, 3: -math.inf}, 0.5),
        ({1: -math.inf, 3: lp(0.1)}, 0.0),
    ],
)
def test_yes_probability_edges(logprobs: dict[int, float], expected: float) -> None:
    assert yes_probability(logprobs, [1, 2], [3, 4]) == expected


def test_single_token_ids_keeps_one_token_spellings_once() -> None:
    tokenizer = FakeTokenizer({"Yes": 7, " Yes": 7, "yes": 8})
    assert single_token_ids(tokenizer, ["Yes", " Yes", "yes", "YES"]) == [7, 8]


def test_lru_cache_evicts_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    LruCache(0).put("x", 1)  # size 0 caches nothing, silently
    with pytest.raises(ValueError):
        LruCache(-1)


def test_judge_prompt_ends_with_the_question_to_answer() -> None:
    prompt = build_judge_prompt(" What is 2+3? ", ["2 + 3 = 5", "So 5."])
    assert prompt == (
        "Question: What is 2+3?\nSolution so far:\nStep 1: 2 + 3 = 5\nStep 2: So 5.\n"
        "Is the last step correct? Answer Yes or No.\nAnswer:"
    )


# --- policy judge: against a fake engine --------------------------------------------------------


def judge_by_last_line(text: str) -> dict[int, float]:
    """A fake judge that likes "good" steps: P(Yes) 0.8 vs 0.2, split across spellings."""
    last_step = text.split("\n")[-3]
    if "good" in last_step:
        return {1: lp(0.5), 2: lp(0.3), 3: lp(0.15), 4: lp(0.05)}
    return {1: lp(0.1), 3: lp(0.4)}


async def test_judge_scores_last_step_concurrently_and_charges_reward() -> None:
    engine = FakePolicyEngine(judge_by_last_line)
    judge = PolicyJudgeRewardModel(engine)
    meter = UsageMeter(policy_flops=FLOPS)
    paths = [["a good step"], ["a good step", "a bad step"], ["a bad step"], ["a bad step"]]
    scores = await judge.score("Q?", paths, meter=meter)
    check_scores(paths, scores)
    assert scores[0] == [pytest.approx(0.8)]
    # Earlier steps: the score this judge gave that prefix in this very batch (cached first).
    assert scores[1] == [pytest.approx(0.8), pytest.approx(0.2)]
    assert scores[2] == scores[3] == [pytest.approx(0.2)]
    # One request per distinct path, all in flight together, charged as the reward component.
    assert len(engine.calls) == 3
    assert engine.max_in_flight == 3
    assert {component for _, _, component in engine.calls} == {"reward"}
    assert meter.component("reward").engine_calls == 3
    assert meter.component("policy").engine_calls == 0
    params = engine.calls[0][1]
    assert params.max_tokens == 1 and params.temperature == 0.0
    assert sorted(params.logprob_token_ids) == [1, 2, 3, 4]


async def test_judge_cache_avoids_rescoring_and_fills_earlier_steps() -> None:
    engine = FakePolicyEngine(judge_by_last_line)
    judge = PolicyJudgeRewardModel(engine)
    await judge.score("Q?", [["a bad step"]])
    assert len(engine.calls) == 1
    scores = await judge.score("Q?", [["a bad step", "a good step", "a good step"], ["a bad step"]])
    assert len(engine.calls) == 2  # only the new path was judged
    # Step 1 from the cache, step 2 never judged as a last step: neutral.
    assert scores[0] == [pytest.approx(0.2), 0.5, pytest.approx(0.8)]
    assert scores[1] == [pytest.approx(0.2)]
    # Another question is another key.
    await judge.score("Other?", [["a bad step"]])
    assert len(engine.calls) == 3


async def test_judge_without_meter_and_with_empty_paths() -> None:
    engine = FakePolicyEngine(judge_by_last_line)
    judge = PolicyJudgeRewardModel(engine)
    assert await judge.score("Q?", [[], ["a good step"]]) == [[], [pytest.approx(0.8)]]
    assert await judge.score("Q?", []) == []


async def test_judge_top_k_mode_asks_for_the_engine_cap() -> None:
    engine = FakePolicyEngine(lambda _: {1: lp(0.6)}, max_logprobs=20)
    judge = PolicyJudgeRewardModel(engine, exact=False)
    assert await judge.score("Q?", [["x"]]) == [[1.0]]  # No outside the top-k
    params = engine.calls[0][1]
    assert params.logprobs == 20 and params.logprob_token_ids is None


async def test_judge_is_neutral_when_no_single_token_yes_no() -> None:
    engine = FakePolicyEngine(judge_by_last_line)
    engine.tokenizer = FakeTokenizer({})
    judge = PolicyJudgeRewardModel(engine)
    assert await judge.score("Q?", [["a good step"], ["x", "y"]]) == [[0.5], [0.5, 0.5]]
    assert engine.calls == []


async def test_judge_prompt_fits_the_engine_keeping_the_last_step() -> None:
    engine = FakePolicyEngine(judge_by_last_line, max_model_len=200)
    judge = PolicyJudgeRewardModel(engine)
    steps = ["an early step " * 10, "the good last step"]
    scores = await judge.score("Q?", [steps])
    prompt_ids = engine.calls[0][0]
    assert len(prompt_ids) <= 199  # room for the one generated token
    text = "".join(map(chr, prompt_ids))
    assert text.endswith("Step 2: the good last step\n" + JUDGE_INSTRUCTION)
    assert text.startswith("Question: Q?\nSolution so far:\nStep 1: ...\n")
    assert "an early step" not in text
    assert scores == [[0.5, pytest.approx(0.8)]]


# --- vllm_prm: pooled outputs -> step scores ----------------------------------------------------


def test_label_probabilities_softmax_over_two_labels() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 3.0]])
    expected_pos0 = torch.softmax(logits.double(), dim=-1)[:, 0].tolist()
    assert label_probabilities(logits, 0) == pytest.approx(expected_pos0, abs=1e-12)
    assert label_probabilities(logits, 1) == pytest.approx([1 - p for p in expected_pos0])
    assert label_probabilities(torch.empty(0, 2), 0) == []


def test_label_probabilities_single_logit_is_sigmoid_and_stable() -> None:
    assert label_probabilities(torch.tensor([[0.0], [800.0], [-800.0]]), 0) == [0.5, 1.0, 0.0]
    assert label_probabilities([1.0], 0) == [pytest.approx(1 / (1 + math.exp(-1)))]
    with pytest.raises(ValueError):
        label_probabilities(torch.zeros(2, 3), 0)


@pytest.mark.parametrize(
    ("tag_scores", "n_steps", "expected"),
    [
        ([0.9, 0.2, 0.7], 3, [0.9, 0.2, 0.7]),
        ([0.9, 0.2], 4, [0.9, 0.2, 0.2, 0.2]),  # cut prompt: repeat the last score
        ([], 2, [0.5, 0.5]),  # no tag survived: neutral
        ([0.1, 0.9, 0.2], 2, [0.9, 0.2]),  # an extra tag before the steps
        ([1.5, -0.5], 2, [1.0, 0.0]),
        ([0.3], 0, []),
    ],
)
def test_align_step_scores(tag_scores: list[float], n_steps: int, expected: list[float]) -> None:
    assert align_step_scores(tag_scores, n_steps) == expected


# --- vllm_prm: model-card recipes ----------------------------------------------------------------


def test_math_shepherd_format_matches_the_card() -> None:
    text = format_math_shepherd(
        "Janet has 16 eggs.", ["She eats 3, so 13 ки left.", "Step 2: 13 - 4 = 9"], "ки"
    )
    assert text == (
        "Janet has 16 eggs. Step 1: She eats 3, so 13   left. ки\nStep 2: 13 - 4 = 9 ки"
    )
    assert text.count("ки") == 2  # exactly one tag per step, whatever the step contained


def test_qwen_prm_format_uses_the_chat_template() -> None:
    tokenizer = build_tokenizer()
    text = format_qwen_prm(tokenizer, "Q?", [" a ", "b<extra_0>c"], "<extra_0>", "SYS")
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n"
        "<|im_start|>assistant\na<extra_0>b c<extra_0><|im_end|>\n"
    )


def test_label_and_tag_ids_follow_the_card_recipes() -> None:
    # Math-Shepherd's card: encode("+ -") -> [648, 387] (after BOS); encode("ки")[-1] = 12902.
    tokenizer = FakeTokenizer({"+ -": 0, "ки": 12902})
    tokenizer.encode = lambda text, add_special_tokens=True: {  # type: ignore[method-assign]
        "+ -": [648, 387],
        "ки": [28705, 12902],
        "+": [648],
        "-": [387],
    }.get(text, [5, 6, 7])
    assert resolve_label_token_ids(tokenizer, "+", "-") == (648, 387)
    assert resolve_step_tag_id(tokenizer, "ки") == 12902
    with pytest.raises(ValueError):
        resolve_label_token_ids(tokenizer, "good", "bad")
    with pytest.raises(ValueError):
        resolve_step_tag_id(FakeTokenizer({}), "")


def test_label_ids_fall_back_to_each_label_alone() -> None:
    tokenizer = FakeTokenizer({"+": 15, "-": 17})  # "+ -" is three tokens here
    assert resolve_label_token_ids(tokenizer, "+", "-") == (15, 17)


# --- vllm_prm: the engine configuration ----------------------------------------------------------


def test_math_shepherd_engine_args_convert_the_lm_head_to_a_two_label_classifier(
    tiny_model_dir,
) -> None:
    # A local folder stands in for the hub id: building engine args must not need a network.
    config = VllmPrmConfig(model=str(tiny_model_dir), block_size=16)
    args = build_prm_engine_args(config, 12902, ["▁+", "▁-"])
    assert args.runner == "pooling"
    assert args.convert == "classify"
    assert args.hf_overrides == {
        "classifier_from_token": ["▁+", "▁-"],
        "method": "no_post_processing",
    }
    assert args.pooler_config.tok_pooling_type == "STEP"
    assert args.pooler_config.step_tag_id == 12902
    assert args.pooler_config.returned_token_ids is None  # indexes hidden states in vLLM 0.32
    assert args.disable_log_stats is True  # keeps the policy engine's vllm:* series
    assert args.block_size == 16
    with pytest.raises(ValueError):
        build_prm_engine_args(config, 12902, None)


def test_qwen_engine_args_use_the_native_token_classifier(tiny_model_dir) -> None:
    config = VllmPrmConfig(model=str(tiny_model_dir), style="qwen_prm")
    assert config.tag == "<extra_0>" and config.positive_index == 1
    args = build_prm_engine_args(config, 151651, None)
    assert args.runner == "pooling" and args.convert == "auto"
    assert not args.hf_overrides
    assert args.pooler_config.tok_pooling_type == "STEP"
    assert args.pooler_config.step_tag_id == 151651


def test_prm_config_validation_and_defaults() -> None:
    config = VllmPrmConfig(model="m")
    assert config.tag == "ки" and config.positive_index == 0
    assert VllmPrmConfig(model="m", step_tag="<step>").tag == "<step>"
    with pytest.raises(ValueError):
        VllmPrmConfig(model="m", style="orm")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        VllmPrmConfig(model="m", step_tag=" ")


def test_prm_config_from_settings() -> None:
    from server.core.config import Settings

    assert prm_config_from_settings(Settings()) is None
    settings = Settings(
        prm_model="prm-dir",
        prm_style="qwen_prm",
        dtype="float32",
        block_size=32,
        enforce_eager=True,
        kv_cache_gib=2,
        gpu_memory_utilization=0.5,
    )
    config = prm_config_from_settings(settings)
    assert config is not None
    assert (config.model, config.style, config.dtype, config.block_size) == (
        "prm-dir",
        "qwen_prm",
        "float32",
        32,
    )
    assert config.enforce_eager and config.kv_cache_gib == 2
    assert config.gpu_memory_utilization == pytest.approx(0.45)


def test_an_engine_environment_is_set_for_the_start_then_restored(monkeypatch) -> None:
    """Each engine of the process (policy, PRM) gets its own KV space: set while it starts."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    with environment(engine_environment(cpu=True, kv_cache_gib=1)):
        assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    with environment(engine_environment(cpu=True, kv_cache_gib=2)):
        assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    with environment(engine_environment(cpu=False, kv_cache_gib=2)):  # not on CPU: untouched
        assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ


# --- vllm_prm: scoring against a fake pooling engine ---------------------------------------------

TAG = 500


class FakePoolingLLM:
    """``AsyncLLM.encode`` returning fixed 2-label logits at every tag of the prompt."""

    def __init__(self, logits_per_tag: list[list[float]], cached: int = 0) -> None:
        self.logits_per_tag = logits_per_tag
        self.cached = cached
        self.requests: list[tuple[list[int], object]] = []

    async def encode(self, prompt, params, request_id):
        ids = prompt["prompt_token_ids"]
        self.requests.append((ids, params))
        n_tags = ids.count(TAG)
        data = torch.tensor(self.logits_per_tag[:n_tags]).reshape(n_tags, 2)
        await asyncio.sleep(0)
        yield SimpleNamespace(outputs=SimpleNamespace(data=data), num_cached_tokens=self.cached)


class TagTokenizer:
    """One token per word; the step tag "ки" is token TAG."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [TAG if w == "ки" else 1 + len(w) for w in text.split()]


def fake_prm(llm: FakePoolingLLM, max_model_len: int = 512) -> VllmProcessRewardModel:
    prm = VllmProcessRewardModel(VllmPrmConfig(model="fake"))
    prm.llm, prm.tokenizer, prm.step_tag_id = llm, TagTokenizer(), TAG
    prm.max_model_len, prm.flops = max_model_len, OTHER_FLOPS
    return prm


async def test_prm_maps_tag_positions_to_step_scores_and_charges_prefill() -> None:
    llm = FakePoolingLLM([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]], cached=3)
    prm = fake_prm(llm)
    meter = UsageMeter(policy_flops=FLOPS)
    paths = [["two plus three", "is five"], ["one", "two", "three"], []]
    scores = await prm.score("What is it?", paths, meter=meter)
    check_scores(paths, scores)
    sig = 1 / (1 + math.exp(-2.0))
    assert scores[0] == [pytest.approx(sig), pytest.approx(1 - 1 / (1 + math.exp(-1.0)))]
    assert scores[1] == [pytest.approx(sig), pytest.approx(0.2689414213699951), 0.5]
    assert scores[2] == []
    assert len(llm.requests) == 2  # an empty path costs nothing
    _, params = llm.requests[0]
    assert params.task == "token_classify" and params.use_activation is False
    assert params.step_tag_id == TAG
    cost = meter.component("reward")
    assert cost.engine_calls == 2
    assert cost.prompt_tokens == sum(len(r[0]) for r in llm.requests)
    assert cost.cached_tokens == 6 and cost.generated_tokens == 0
    assert meter.reward_flops is OTHER_FLOPS  # charged at the PRM's size, not the policy's
    assert meter.component("policy").engine_calls == 0


async def test_prm_cut_prompt_fills_missing_steps_with_the_last_score() -> None:
    llm = FakePoolingLLM([[1.0, 0.0]] * 5)
    prm = fake_prm(llm, max_model_len=10)
    scores = await prm.score("Q", [["a", "b", "c", "d"]])
    assert len(llm.requests[0][0]) == 10  # "Q Step 1: a ки Step 2: b ки Step 3: ..." cut
    assert llm.requests[0][0].count(TAG) == 2
    p = 1 / (1 + math.exp(-1.0))
    assert scores == [[pytest.approx(p)] * 4]


async def test_prm_refuses_to_score_before_start() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await VllmProcessRewardModel(VllmPrmConfig(model="m")).score("Q", [["a"]])


# --- the registry ---------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert REWARD_MODELS == ("arithmetic", "policy_judge", "vllm_prm")


def test_registry_builds_the_cpu_models() -> None:
    engine = FakePolicyEngine(judge_by_last_line)
    assert isinstance(
        build_reward_model("arithmetic", engine=None, prm=None), ArithmeticRewardModel
    )
    judge = build_reward_model("policy_judge", engine=engine, prm=None)
    assert isinstance(judge, PolicyJudgeRewardModel) and judge.engine is engine


def test_registry_returns_the_started_prm() -> None:
    prm = fake_prm(FakePoolingLLM([]))
    assert build_reward_model("vllm_prm", engine=None, prm=prm) is prm


@pytest.mark.parametrize(
    ("name", "engine", "prm", "message"),
    [
        ("vllm_prm", None, None, "not configured"),
        ("vllm_prm", None, VllmProcessRewardModel(VllmPrmConfig(model="m")), "not started"),
        ("policy_judge", None, None, "needs the policy engine"),
        ("orm", None, None, "unknown reward model 'orm'"),
    ],
)
def test_registry_errors(name: str, engine, prm, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_reward_model(name, engine=engine, prm=prm)
