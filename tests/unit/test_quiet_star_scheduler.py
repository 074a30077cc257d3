"""The Quiet-STaR continuation scheduler driven the way vLLM's engine core drives it (schedule,
then the model runner's sampled tokens), on vLLM's real scheduler and KV cache manager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from kernels.quiet_star.scheduler import QuietStarScheduler
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec
from tests.tiny_model import build_tiny_llama

BLOCK = 4
START, END = 5, 6
PROMPT = [10, 11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> VllmConfig:
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    vllm_config = VllmConfig(
        model_config=ModelConfig(model=str(model), dtype="float32", max_model_len=64),
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
        scheduler_config=SchedulerConfig(
            max_num_seqs=8,
            max_num_batched_tokens=256,
            max_model_len=64,
            is_encoder_decoder=False,
            async_scheduling=False,
        ),
        device_config=DeviceConfig("cpu"),
    )
    vllm_config.cache_config.num_gpu_blocks = 64
    init_none_hash(sha256)
    return vllm_config


def scheduler(config: VllmConfig) -> QuietStarScheduler:
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=8, dtype=torch.float32)
    kv = KVCacheConfig(
        num_blocks=64, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)]
    )
    return QuietStarScheduler(
        vllm_config=config,
        kv_cache_config=kv,
        structured_output_manager=StructuredOutputManager(config),
        block_size=BLOCK,
    )


def request(
    req_id: str, max_tokens: int, start=(START,), end=(END,), thought_tokens=2, **params
) -> Request:
    spec = QuietStarSpec(
        key=req_id, thought_tokens=thought_tokens, mixing_weight=0.5, thought_temperature=1.0,
        temperature=1.0, top_p=1.0, start_token_ids=start, end_token_ids=end,
        banned_token_ids=(*start, *end), continuation=True, context_len=len(PROMPT),
    )  # fmt: skip
    sampling = SamplingParams(
        max_tokens=max_tokens, ignore_eos=True, extra_args=spec.to_extra_args(), **params
    )
    sampling.update_from_generation_config({}, None)
    hasher = get_request_block_hasher(BLOCK, sha256)
    return Request(req_id, list(PROMPT), sampling, None, block_hasher=hasher, arrival_time=0.0)


def step(
    sched: QuietStarScheduler, req: Request, token: int, logprobs: LogprobsLists | None = None
):
    """One engine step: schedule, then the runner 'samples' `token` for the request."""
    out = sched.schedule()
    runner = ModelRunnerOutput(
        req_ids=[req.request_id],
        req_id_to_index={req.request_id: 0},
        sampled_token_ids=[[token]],
        logprobs=logprobs,
    )
    emitted = [o for e in sched.update_from_output(out, runner).values() for o in e.outputs]
    return out, emitted


def cached_blocks(sched: QuietStarScheduler, req: Request) -> int:
    manager = sched.kv_cache_manager.coordinator.single_type_managers[0]
    return manager.num_cached_block.get(req.request_id, 0)


def test_each_talk_token_replaces_its_thought_and_is_computed_where_start_was(config) -> None:
    sched = scheduler(config)
    req = request("r", max_tokens=3, seed=7)
    sched.add_request(req)
    # one-token delimiters: the runner samples every round token (a single forced token is not
    # worth a re-announcement, MIN_FUSED_TOKENS)
    rounds = [[START, 20, 21, END, 30], [START, 22, 23, END, 31], [START, 24, 25, END, 32]]
    visible = list(PROMPT)
    for k, tokens in enumerate(rounds):
        for i, token in enumerate(tokens):
            out, emitted = step(sched, req, token)
            if i == 0 and k > 0:
                # the step after a rollback re-announces the request to the model runner:
                # finished + new, its prompt the visible text, the talk token still to compute
                (new,) = out.scheduled_new_reqs
                assert out.finished_req_ids == {"r"} and not out.scheduled_cached_reqs.req_ids
                assert new.prompt_token_ids == visible
                assert new.num_computed_tokens == len(visible) - 1
                assert new.sampling_params.seed == 7 + k  # token k samples with seed + k
                assert ROUND_STEP_KEY not in new.sampling_params.extra_args
            elif k > 0 or i > 0:  # (the very first step admits the request itself)
                assert not out.scheduled_new_reqs
            assert [o.new_token_ids for o in emitted] == [[token]]  # every token is streamed
            if i < len(tokens) - 1:
                assert list(req.all_token_ids) == visible + tokens[: i + 1]
                # thought KV is never prefix-cached: only whole blocks of visible tokens
                assert cached_blocks(sched, req) <= len(visible) // BLOCK
        visible.append(tokens[-1])
        assert list(req.all_token_ids) == visible  # the thought is gone
        assert req.num_output_tokens == k + 1  # max_tokens counts talk tokens
        if k < len(rounds) - 1:
            assert req.num_computed_tokens == len(visible) - 1
            assert len(req.block_hashes) == len(visible) // BLOCK
    assert req.is_finished() and emitted[0].finish_reason is not None
    assert not sched._sequences  # freed


def test_multi_token_delimiters_cost_no_extra_steps(config) -> None:
    """Start `(5, 7, 8)`, end `(6, 9)`, t = 1: the runner samples start[0], one thought token
    and the talk token (t + 2 = 3 steps); the other 4 delimiter tokens ride along, computed in
    the same forward pass as the token before them."""
    sched = scheduler(config)
    req = request("d", max_tokens=2, start=(START, 7, 8), end=(END, 9), thought_tokens=1, seed=1)
    sched.add_request(req)
    visible = list(PROMPT)
    for k, talk in enumerate((30, 31)):
        _, emitted = step(sched, req, START)
        assert emitted[0].new_token_ids == [START, 7, 8]
        out, emitted = step(sched, req, 20)
        (new,) = out.scheduled_new_reqs  # start[1:] computed with start[0]
        assert new.prompt_token_ids == [*visible, START, 7, 8]
        assert new.num_computed_tokens == len(visible)  # the base row is behind it
        assert out.num_scheduled_tokens["d"] == 3
        assert new.sampling_params.extra_args[ROUND_STEP_KEY] == 3  # the thought token
        assert new.sampling_params.seed not in (None, 1 + k)  # a stream of its own
        assert emitted[0].new_token_ids == [20, END, 9]
        out, emitted = step(sched, req, talk)
        (new,) = out.scheduled_new_reqs
        assert new.prompt_token_ids == [*visible, START, 7, 8, 20, END, 9]
        assert out.num_scheduled_tokens["d"] == 3
        assert new.sampling_params.extra_args[ROUND_STEP_KEY] == 6  # the talk token
        visible.append(talk)
        assert list(req.all_token_ids) == visible
        assert cached_blocks(sched, req) <= len(visible) // BLOCK
    assert req.is_finished()


def test_forced_tokens_get_a_logprobs_row_each(config) -> None:
    """vLLM's output path slices one logprobs row per streamed token: each appended forced
    token gets its own row (itself, logprob 0), the sampled token keeps the runner's row."""
    sched = scheduler(config)
    req = request("l", max_tokens=1, end=(END, 9), logprobs=1)
    sched.add_request(req)

    def row(token: int) -> LogprobsLists:
        return LogprobsLists(np.array([[token, 3]]), np.array([[-0.5, -1.5]]), np.array([2]), None)

    for token in (START, 20):
        _, emitted = step(sched, req, token, row(token))
        assert len(emitted[0].new_logprobs.logprobs) == 1
    _, emitted = step(sched, req, 21, row(21))  # END, 9 are appended after it
    lists = emitted[0].new_logprobs
    assert emitted[0].new_token_ids == [21, END, 9]
    assert lists.logprob_token_ids[:, 0].tolist() == [21, END, 9]
    assert lists.logprobs[:, 0].tolist() == [-0.5, 0.0, 0.0]
    assert lists.logprobs[1, 1] == -np.inf and lists.sampled_token_ranks.tolist() == [2, 1, 1]


def test_a_preempted_request_is_re_announced_with_its_round_position(config) -> None:
    sched = scheduler(config)
    req = request("p", max_tokens=2, end=(END, 9), seed=5)
    sched.add_request(req)
    for token in (START, 20, 21):
        step(sched, req, token)  # END, 9 appended: a re-announcement is due
    sched._reannounce.clear()  # as if it had run; then the request is preempted
    sched.running.remove(req)
    sched._preempt_request(req, 0.0)  # (puts it back in the waiting queue)
    out, _ = step(sched, req, 30)
    (new,) = out.scheduled_new_reqs
    assert "p" in out.finished_req_ids
    assert new.prompt_token_ids == [*PROMPT, START, 20, 21, END, 9]
    assert new.sampling_params.extra_args[ROUND_STEP_KEY] == 5
    assert list(req.all_token_ids) == [*PROMPT, 30]


def test_a_thought_token_never_stops_the_request_a_talk_token_does(config) -> None:
    sched = scheduler(config)
    req = request("s", max_tokens=5, stop_token_ids=[99])
    sched.add_request(req)
    for token in [START, 99, 21, END]:  # 99 inside the thought: not a stop
        step(sched, req, token)
        assert not req.is_finished()
    _, emitted = step(sched, req, 99)  # 99 as the talk token: stop
    assert req.is_finished() and req.stop_reason == 99
    assert emitted[0].new_token_ids == [99]
    assert list(req.all_token_ids) == [*PROMPT, 99]


def test_a_step_that_would_pass_max_model_len_is_not_started(config) -> None:
    sched = scheduler(config)
    req = request("m", max_tokens=100)
    sched.add_request(req)
    tokens = 0
    while not req.is_finished():
        step(sched, req, [START, 20, 21, END, 30][tokens % 5])
        tokens += 1
    # visible + (t + 3) <= max_model_len after the last talk token; never a cut thought
    assert tokens % 5 == 0
    assert len(req.all_token_ids) + 5 > 64 >= len(req.all_token_ids)
    assert req.get_finished_reason() is not None


@pytest.fixture
def v2_runner(monkeypatch) -> None:
    """The scheduler as it runs in front of Model Runner V2 (vLLM's GPU default)."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")


def test_model_runner_v2_gets_the_rolled_back_prompt_as_its_prefill(config, v2_runner) -> None:
    """V2's runner rebuilds a request from `prefill_token_ids`: after a rollback (and after
    appended forced tokens) that must be the visible text plus the round so far."""
    sched = scheduler(config)
    assert sched.use_v2_model_runner
    req = request("v", max_tokens=2, end=(END, 9))
    sched.add_request(req)
    step(sched, req, START)
    step(sched, req, 20)
    step(sched, req, 21)  # END, 9 appended
    out, _ = step(sched, req, 30)
    (new,) = out.scheduled_new_reqs
    assert new.prompt_token_ids == new.prefill_token_ids == [*PROMPT, START, 20, 21, END, 9]
    assert new.sampling_params.extra_args[ROUND_STEP_KEY] == 5
    out, _ = step(sched, req, START)  # the round after the talk token 30
    (new,) = out.scheduled_new_reqs
    assert new.prompt_token_ids == new.prefill_token_ids == [*PROMPT, 30]


def test_model_runner_v2_resumes_a_preempted_request_with_its_round(config, v2_runner) -> None:
    """V2 sends a resumed request as new with the original prompt; the scheduler rewrites
    that entry (prompt = every token so far, the round step in `extra_args`), once."""
    sched = scheduler(config)
    req = request("q", max_tokens=2, end=(END, 9), seed=5)
    sched.add_request(req)
    for token in (START, 20, 21):
        step(sched, req, token)
    sched._reannounce.clear()  # as if it had run; then the request is preempted
    sched.running.remove(req)
    sched._preempt_request(req, 0.0)
    out, _ = step(sched, req, 30)
    (new,) = out.scheduled_new_reqs
    assert new.prompt_token_ids == new.prefill_token_ids == [*PROMPT, START, 20, 21, END, 9]
    assert new.sampling_params.extra_args[ROUND_STEP_KEY] == 5
    assert not out.scheduled_cached_reqs.req_ids  # announced once, as new
