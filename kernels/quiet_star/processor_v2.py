"""The Quiet-STaR logits processor, vLLM Model Runner V2 interface (vLLM's GPU default).

Model Runner V2 refuses V1-interface processors at engine start, so a GPU engine either pins
the V1 runner or loads this class (`--model-runner`, server/core/config.py). The step machine is
the V1 processor's (kernels/quiet_star/step_machine.py); what differs is how a row's request
and round step are found:

* V2 hands a processor a persistent request *slot* per request (`add_request(slot, params)`),
  and every step a `LogitsContext` mapping batch positions to slots; there are no
  remove/move callbacks, a slot is simply re-added for its next occupant.
* The round step is `offset + (seq_len - prompt_len)`: `seq_len` is the host-side length the
  sampled token will follow (`ctx.seq_lens_upper_bound_np`, exact without speculative
  decoding, which Quiet-STaR refuses), `prompt_len` the runner's prompt for that slot. A
  chunk of a longer prompt has `seq_len < prompt_len`: it counts as step 0, whose base the
  last chunk overwrites, as under V1. A preempted request comes back with its outputs in
  `prefill_len`, not `prompt_len`, so its step is unchanged; a continuation request is
  re-announced by the scheduler with the visible text as its prompt (kernels/quiet_star/
  scheduler.py, which fills V2's `prefill_token_ids`).
* Saved bases are dropped when they can no longer be used: a continuation request's right
  after its talk token (synchronous scheduling: the talk row is never run again, and the next
  round's step 0 saves a new one under the same key); a per-token request's when its slot is
  reused after its talk (its key is its own); anything else by the machine's bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from kernels.quiet_star.plugin import register
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec
from kernels.quiet_star.step_machine import (
    MAX_PARKED_BASES,
    StepMachine,
    validate_quiet_star_params,
)

register()  # as in processor.py: the worker may load the model after importing this


@dataclass
class _SlotRequest:
    """The Quiet-STaR request occupying a slot."""

    spec: QuietStarSpec
    offset: int  # round tokens already in the runner's prompt (ROUND_STEP_KEY)
    talked: bool = False  # its talk row has been mixed


@dataclass
class _StepRow:
    """A slot's request as the step machine sees it this step."""

    spec: QuietStarSpec
    offset: int
    context: int
    step: int


class QuietStarLogitsProcessorV2(LogitsProcessor):
    """Runs the Quiet-STaR step machine on the rows of requests that carry its arguments."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_quiet_star_params(sampling_params)

    def __init__(self, vllm_config, req_states: LogitsProcRequestState) -> None:
        if vllm_config is not None and vllm_config.speculative_config is not None:
            # one logits row per request is what the round step arithmetic assumes
            raise ValueError("the Quiet-STaR processor does not run with speculative decoding")
        self.prompt_len = req_states.prompt_len
        self.slots: dict[int, _SlotRequest] = {}
        self.machine = StepMachine(max_saved=req_states.max_num_reqs + MAX_PARKED_BASES)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        previous = self.slots.pop(req_idx, None)
        if previous is not None and previous.talked and not previous.spec.continuation:
            self.machine.forget(previous.spec.key)  # a per-token request ends at its talk
        spec = QuietStarSpec.from_extra_args(sampling_params.extra_args)
        if spec is None:
            return False
        offset = int(sampling_params.extra_args.get(ROUND_STEP_KEY, 0))
        self.slots[req_idx] = _SlotRequest(spec, offset)
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self.slots:
            return logits
        requests: list[_SlotRequest] = []
        rows: list[tuple[int, _StepRow]] = []
        for position, slot in enumerate(ctx.idx_mapping_np.tolist()):
            request = self.slots.get(slot)
            if request is None:
                continue
            prompt = int(self.prompt_len.np[slot])
            produced = max(0, int(ctx.seq_lens_upper_bound_np[position]) - prompt)
            step = request.offset + produced
            requests.append(request)
            rows.append((position, _StepRow(request.spec, request.offset, prompt, step)))
        if not rows:
            return logits
        logits = self.machine.apply(logits, rows)
        for request, (_, row) in zip(requests, rows, strict=True):
            if row.spec.phase(row.step)[0] != "talk":
                continue
            request.talked = True
            if row.spec.continuation:
                self.machine.forget(row.spec.key)
        return logits
