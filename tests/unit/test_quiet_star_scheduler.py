"""The Quiet-STaR continuation scheduler driven the way vLLM's engine core drives it (schedule,
then the model runner's sampled tokens), on vLLM's real scheduler and KV cache manager."""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from kernels.quiet_star.scheduler import QuietStarScheduler
from kernels.quiet_star.spec import QuietStarSpec
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


def request(req_id: str, max_tokens: int, **params) -> Request:
    spec = QuietStarSpec(
        key=req_id, thought_tokens=2, mixing_weight=0.5, thought_temperature=1.0,
        temperature=1.0, top_p=1.0, start_token_ids=(START,), end_token_ids=(END,),
        banned_token_ids=(START, END), continuation=True, context_len=len(PROMPT),
    )  # fmt: skip
    sampling = SamplingParams(
        max_tokens=max_tokens, ignore_eos=True, extra_args=spec.to_extra_args(), **params
    )
    sampling.update_from_generation_config({}, None)
    hasher = get_request_block_hasher(BLOCK, sha256)
    return Request(req_id, list(PROMPT), sampling, None, block_hasher=hasher, arrival_time=0.0)


def step(sched: QuietStarScheduler, req: Request, token: int):
    """One engine step: schedule, then the runner 'samples' `token` for the request."""
    out = sched.schedule()
    runner = ModelRunnerOutput(
        req_ids=[req.request_id], req_id_to_index={req.request_id: 0}, sampled_token_ids=[[token]]
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
