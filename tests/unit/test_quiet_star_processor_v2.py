"""The Quiet-STaR processor's Model Runner V2 adapter, driven the way V2's sampler drives it
(slots, `LogitsContext`), checked against the V1 processor on the same request histories.

No GPU here: V2 only runs on CUDA, so its sampler is replaced by the two calls it makes
(`add_request` when a request takes a slot, `apply` once per step); the class itself is loaded
through vLLM's own V2 loader and params validator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcRequestState,
    build_custom_logits_processors_params_validator,
)
from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

from kernels.quiet_star import PROCESSOR_V2_FQCN
from kernels.quiet_star.processor import QuietStarLogitsProcessor
from kernels.quiet_star.processor_v2 import QuietStarLogitsProcessorV2
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec
from tests.unit.test_quiet_star_processor import END, EOS, START, VOCAB, only_allowed, spec

SLOTS = 8


def params(s: QuietStarSpec | None, **extra) -> SamplingParams:
    extra_args = {**s.to_extra_args(), **extra} if s else None
    return SamplingParams(max_tokens=8, extra_args=extra_args)


def make_v2() -> tuple[QuietStarLogitsProcessorV2, np.ndarray]:
    prompt_len = np.zeros(SLOTS, dtype=np.int32)
    states = LogitsProcRequestState(
        device=torch.device("cpu"), max_num_reqs=SLOTS, vocab_size=VOCAB,
        all_token_ids=None, prompt_len=SimpleNamespace(np=prompt_len),
        prefill_len=None, total_len=None,
    )  # fmt: skip
    return QuietStarLogitsProcessorV2(None, states), prompt_len


def context(slots: list[int], seq_lens: list[int]) -> LogitsContext:
    mapping = torch.tensor(slots)
    return LogitsContext(
        expanded_idx_mapping=mapping, idx_mapping=mapping, idx_mapping_np=np.array(slots),
        expanded_local_pos=torch.zeros(len(slots), dtype=torch.long),
        input_ids=torch.zeros(len(slots), dtype=torch.long),
        pos=torch.tensor(seq_lens) - 1, seq_lens_upper_bound_np=np.array(seq_lens),
    )  # fmt: skip


@dataclass
class Req:
    """One request as both runners would hold it."""

    sampling: SamplingParams
    prompt: list[int]
    slot: int
    outputs: list[int] = field(default_factory=list)
    prefill_chunks: int = 0  # steps still spent on the prompt (chunked prefill)

    def seq_len(self) -> int:
        if self.prefill_chunks:
            return len(self.prompt) - self.prefill_chunks
        return len(self.prompt) + len(self.outputs)


def test_v2_is_loaded_and_validated_by_vllms_own_v2_loader() -> None:
    (cls,) = _load_v2_logitsprocs_by_fqcns([PROCESSOR_V2_FQCN])
    assert cls is QuietStarLogitsProcessorV2
    validate = build_custom_logits_processors_params_validator([PROCESSOR_V2_FQCN])
    s = spec(t=2)
    validate(SamplingParams(max_tokens=s.steps, extra_args=s.to_extra_args()))
    with pytest.raises(VLLMValidationError, match="at most 5 steps"):
        validate(SamplingParams(max_tokens=s.steps + 1, extra_args=s.to_extra_args()))


def test_v2_refuses_speculative_decoding() -> None:
    states = LogitsProcRequestState(torch.device("cpu"), SLOTS, VOCAB, None, None, None, None)
    with pytest.raises(ValueError, match="speculative"):
        QuietStarLogitsProcessorV2(SimpleNamespace(speculative_config=object()), states)


def test_v2_gives_the_v1_logits_on_the_same_histories() -> None:
    """A per-token request (chunked prompt), a continuation request re-announced after its
    first round token (`ROUND_STEP_KEY`, as the scheduler does), multi-token delimiters and a
    plain request, in slots that differ from their batch rows, fed in a different order every
    step: V2's rows equal V1's, step after step."""
    torch.manual_seed(0)
    plain = Req(params(None), [1, 2, 3], slot=5)
    per_token = Req(params(spec("a", t=2, mixing_weight=0.3, temperature=1.0)), [1, 2, 3, 4],
                    slot=2, prefill_chunks=2)  # fmt: skip
    multi = spec("b", t=1, start_token_ids=(7, 8), end_token_ids=(9, 10), mixing_weight=0.7)
    delimited = Req(params(multi), [4, 4], slot=0)
    cont = spec("c", t=2, continuation=True, context_len=2, min_tokens=1, stop_token_ids=(EOS,))
    continued = Req(params(cont), [6, 6], slot=7)
    requests = [plain, per_token, delimited, continued]

    v1 = QuietStarLogitsProcessor(None, torch.device("cpu"), False)
    v1.update_state(
        BatchUpdate(len(requests), removed=[],
                    added=[(i, r.sampling, r.prompt, r.outputs) for i, r in enumerate(requests)],
                    moved=[])
    )  # fmt: skip
    v2, prompt_len = make_v2()
    for r in requests:
        prompt_len[r.slot] = len(r.prompt)
        assert v2.add_request(r.slot, r.sampling) is (r is not plain)

    rounds = 7
    for step in range(rounds):
        if step == 1:  # re-announce the continuation request: its prompt now ends with START
            k = requests.index(continued)
            continued = Req(params(cont, **{ROUND_STEP_KEY: 1}), [6, 6, START], slot=4)
            requests[k] = continued
            v1.update_state(BatchUpdate(len(requests), removed=[k], added=[], moved=[]))
            v1.update_state(BatchUpdate(len(requests), removed=[],
                                        added=[(k, continued.sampling, continued.prompt,
                                                continued.outputs)], moved=[]))  # fmt: skip
            prompt_len[4] = 3
            v2.add_request(4, continued.sampling)
        logits = torch.randn(len(requests), VOCAB)
        out_v1 = v1.apply(logits.clone())
        # V2's batch order is its own: feed the same requests in a rotated order
        order = [(k + step) % len(requests) for k in range(len(requests))]
        ctx = context([requests[k].slot for k in order], [requests[k].seq_len() for k in order])
        out_v2 = v2.apply(logits[order].clone(), ctx)
        for row, k in enumerate(order):
            assert torch.equal(out_v2[row], out_v1[k]), (step, k)
        for k, r in enumerate(requests):  # greedy "sampler": the best allowed token
            if r.prefill_chunks:
                r.prefill_chunks -= 1  # the chunk's sample is thrown away
                continue
            r.outputs.append(int(out_v1[k].argmax()))
    # every Quiet-STaR request went through a whole round, talk token included
    assert per_token.outputs[0] == START and len(per_token.outputs) == 5
    assert delimited.outputs[:2] == [7, 8] and delimited.outputs[3:5] == [9, 10]
    assert continued.outputs[2] == END and continued.outputs[3] != EOS  # talk: EOS banned


def _run_round(v2, req: Req, steps: int, logits: torch.Tensor | None = None):
    out = None
    for _ in range(steps):
        row = torch.randn(1, VOCAB) if logits is None else logits.clone()
        out = v2.apply(row, context([req.slot], [req.seq_len()]))
        req.outputs.append(int(out[0].argmax()))
    return out


def test_a_preempted_request_keeps_its_base_in_another_slot() -> None:
    v2, prompt_len = make_v2()
    s = spec("p", t=1, mixing_weight=0.0)
    req = Req(params(s), [1, 2], slot=3)
    prompt_len[3] = 2
    v2.add_request(3, req.sampling)
    base = torch.randn(1, VOCAB)
    _run_round(v2, req, 2, base)  # start (base saved), one thought
    req.slot = 6  # preempted, resumed elsewhere: V2 keeps `prompt_len`, outputs follow
    prompt_len[6] = 2
    v2.add_request(6, req.sampling)
    v2.add_request(3, params(None))  # its old slot goes to another request
    end = _run_round(v2, req, 1)
    assert only_allowed(end[0]) == [END]
    talk = _run_round(v2, req, 1)
    assert only_allowed(talk[0]) == [int(base.argmax())]  # w = 0: the saved base decides


def test_saved_bases_are_dropped_once_they_cannot_be_used() -> None:
    v2, prompt_len = make_v2()
    per_token = Req(params(spec("a", t=0)), [1], slot=1)
    cont = Req(params(spec("c", t=0, continuation=True)), [1], slot=2)
    for r in (per_token, cont):
        prompt_len[r.slot] = 1
        v2.add_request(r.slot, r.sampling)
    _run_round(v2, per_token, 2)
    _run_round(v2, cont, 2)
    assert set(v2.machine.bases) == {"a", "c"}  # start and end done, talks to come
    _run_round(v2, per_token, 1)
    _run_round(v2, cont, 1)
    # continuation: gone at once (the next round saves its own); per-token: kept until its
    # slot is reused (the talk row's token is not committed yet under async scheduling)
    assert set(v2.machine.bases) == {"a"}
    v2.add_request(1, params(None))
    assert not v2.machine.bases
