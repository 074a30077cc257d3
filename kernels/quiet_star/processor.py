"""The Quiet-STaR logits processor, vLLM V1 model-runner interface (the CPU backend's).

The model runner sees one Quiet-STaR token per request: either one engine request per token
(the per-token path) or, with the continuation scheduler (kernels/quiet_star/scheduler.py), a
sequence's request re-announced to the runner after each talk token with the visible text as its
prompt, and again inside a round where the scheduler appended forced delimiter tokens (then
`extra_args[ROUND_STEP_KEY]` is the round index of the runner's first sample). Either way the
step is that offset plus the length of the request's output so far in the runner; what a step
does to its row is the step machine's job (kernels/quiet_star/step_machine.py), shared with the
Model Runner V2 adapter (kernels/quiet_star/processor_v2.py).

A Quiet-STaR checkpoint has one start and one end token (t + 3 round tokens); other models
may use multi-token delimiter strings (a few more). Under the continuation scheduler only
start[0], the thoughts and the talk token reach this processor as samples: the rest of the
delimiters is appended by the scheduler and never sampled.

Robustness (why the bookkeeping below):
* chunked prefill: a partially prefilled prompt also produces a row at step 0 whose sample is
  thrown away; saving the base again at every step-0 call keeps the *last* one, which is the
  real end of the prompt;
* async scheduling: vLLM appends a placeholder (-1) for a token still being sampled, so the
  output *length* is right even when its last value is not known yet; we only use the length;
* preemption: a preempted request leaves the batch and comes back later (re-added with its
  outputs); its base distribution is kept under the request's `key`, not its batch row;
* batch changes: rows are removed, added, then moved/swapped, in that order (BatchUpdate).
Rows of requests without Quiet-STaR arguments are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from kernels.quiet_star.plugin import register
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec
from kernels.quiet_star.step_machine import (
    MAX_PARKED_BASES,
    StepMachine,
    validate_quiet_star_params,
)

# vLLM imports this module in every engine worker before it loads the model: registering the
# Quiet-STaR architecture here makes it resolvable even where the package's vLLM plugin entry
# point is not installed (a plain checkout). Idempotent.
register()


@dataclass
class _Row:
    spec: QuietStarSpec
    output_ids: list[int]  # vLLM's live list: its length is the request's step ...
    offset: int = 0  # ... after this many round tokens already in the runner's prompt
    context: int = 0  # prompt length in the runner (continuation: visible text + offset)

    @property
    def step(self) -> int:
        return self.offset + len(self.output_ids)


class QuietStarLogitsProcessor(LogitsProcessor):
    """Runs the Quiet-STaR step machine on every row that carries `extra_args["quiet_star"]`."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_quiet_star_params(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        max_seqs = vllm_config.scheduler_config.max_num_seqs if vllm_config else 0
        self.machine = StepMachine(max_saved=max_seqs + MAX_PARKED_BASES)

    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens and mixes distributions: greedy results change

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._drop_row(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self._drop_row(index)
            spec = QuietStarSpec.from_extra_args(params.extra_args) if params else None
            if spec is not None:
                offset = int(params.extra_args.get(ROUND_STEP_KEY, 0))
                self.rows[index] = _Row(spec, output_ids, offset, len(prompt_ids or ()))
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def _drop_row(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None and row.step >= row.spec.steps:  # finished: its talk token is out
            self.machine.forget(row.spec.key)
        # else preempted or aborted: the base stays parked (bounded) until it comes back

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        return self.machine.apply(logits, list(self.rows.items()))
