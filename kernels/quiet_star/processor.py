"""The Quiet-STaR logits processor (vLLM V1 model-runner interface).

The model runner sees one Quiet-STaR token per request: either one engine request per token
(the per-token path) or, with the continuation scheduler (kernels/quiet_star/scheduler.py), a
sequence's request re-announced to the runner after each talk token with the visible text as its
prompt, and again inside a round where the scheduler appended forced delimiter tokens (then
`extra_args[ROUND_STEP_KEY]` is the round index of the runner's first sample). Either way the
step is that offset plus the length of the request's output so far in the runner, which drives
a small state machine per batch row:

| step (phase)  | this row's logits become                                             |
|---------------|----------------------------------------------------------------------|
| start, 1st    | saved as the *base* distribution; forced to the thought-start token |
| start, rest   | forced to the next token of a multi-token start delimiter           |
| thought (t)   | scaled by the thought temperature; start/end/EOS banned             |
| end           | forced to the thought-end token(s)                                  |
| talk          | mix(base, post-thought), mask, user temperature/min-p/top-k/top-p   |

A Quiet-STaR checkpoint has one start and one end token (t + 3 round tokens); other models
may use multi-token delimiter strings (a few more). Under the continuation scheduler only
start[0], the thoughts and the talk token reach this processor as samples: the rest of the
delimiters is appended by the scheduler and never sampled.

The mixing weight w is the request's (`mixing_weight`), or, for `mixing_source == "head"`,
the served checkpoint's learned head evaluated on the post-norm hidden states of the step-0
row (h_base) and the talk row (h_end): the model publishes the hidden state of every logits
row (kernels/quiet_star/hidden.py) and this processor keeps h_base next to the base
distribution.

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

from collections import OrderedDict
from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from kernels.quiet_star import hidden, tensor_ops
from kernels.quiet_star.plugin import register
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec

# vLLM imports this module in every engine worker before it loads the model: registering the
# Quiet-STaR architecture here makes it resolvable even where the package's vLLM plugin entry
# point is not installed (a plain checkout). Idempotent.
register()

# Bases of requests that left the batch unfinished (preempted or aborted), kept for their
# return; bounded so aborted requests cannot leak memory.
_MAX_PARKED_BASES = 256


@dataclass
class _Saved:
    """What step 0 leaves for the talk step of the same request."""

    base: torch.Tensor  # log_softmax of the base logits (full vocabulary)
    h_base: torch.Tensor | None  # post-norm hidden state of that row (head mixing only)


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
        spec = QuietStarSpec.from_extra_args(sampling_params.extra_args)
        if spec is None:
            return
        if spec.continuation:
            return  # a whole sequence: the scheduler rolls each token's thought back
        if sampling_params.max_tokens is not None and sampling_params.max_tokens > spec.steps:
            raise ValueError(f"a Quiet-STaR request runs at most {spec.steps} steps (t + 3)")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.bases: OrderedDict[str, _Saved] = OrderedDict()

    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens and mixes distributions: greedy results change

    # -- batch bookkeeping ----------------------------------------------------------------
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
        if row is None:
            return
        if row.step >= row.spec.steps:  # finished: its talk token is out
            self.bases.pop(row.spec.key, None)
        else:  # preempted or aborted: park the base until it comes back (bounded)
            while len(self.bases) > _MAX_PARKED_BASES:
                self.bases.popitem(last=False)

    # -- the step machine -------------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        start, forced, thought, talk = [], [], [], []
        forced_ids: list[int] = []
        for index, row in self.rows.items():
            if index >= logits.shape[0]:
                continue
            phase, offset = row.spec.phase(row.step)
            if phase == "start" and offset == 0:
                start.append((index, row))
            elif phase == "start":
                forced.append((index, row))
                forced_ids.append(row.spec.start_token_ids[offset])
            elif phase == "thought":
                thought.append((index, row))
            elif phase == "end":
                forced.append((index, row))
                forced_ids.append(row.spec.end_token_ids[offset])
            elif phase == "talk":
                talk.append((index, row))
        if talk:
            self._talk(logits, talk)
        if start:
            self._start(logits, start)
        if thought:
            self._thought(logits, thought)
        if forced:
            self._force(logits, forced, forced_ids)
        return logits

    def _start(self, logits: torch.Tensor, rows: list[tuple[int, _Row]]) -> None:
        idx = torch.tensor([i for i, _ in rows], device=logits.device)
        base = torch.log_softmax(logits[idx], dim=-1)
        needs_hidden = any(row.spec.mixing_source == "head" for _, row in rows)
        states = hidden.latest(logits.shape[0])[idx] if needs_hidden else None
        for k, (_, row) in enumerate(rows):
            h_base = None
            if states is not None and row.spec.mixing_source == "head":
                h_base = states[k].clone()
            # last write wins (chunked prefill)
            self.bases[row.spec.key] = _Saved(base[k].clone(), h_base)
            self.bases.move_to_end(row.spec.key)
        self._force(logits, rows, [row.spec.start_token_ids[0] for _, row in rows])

    def _thought(self, logits: torch.Tensor, rows: list[tuple[int, _Row]]) -> None:
        idx = torch.tensor([i for i, _ in rows], device=logits.device)
        width = max(len(row.spec.banned_token_ids) or 1 for _, row in rows)
        banned = torch.tensor(
            [_pad(row.spec.banned_token_ids or row.spec.start_token_ids, width) for _, row in rows],
            device=logits.device,
        )
        temps = torch.tensor(
            [row.spec.thought_temperature for _, row in rows], device=logits.device
        )
        logits[idx] = tensor_ops.thought_logits(logits[idx], temps, banned)

    def _talk(self, logits: torch.Tensor, rows: list[tuple[int, _Row]]) -> None:
        ready = [(i, row) for i, row in rows if row.spec.key in self.bases]
        if not ready:
            return
        idx = torch.tensor([i for i, _ in ready], device=logits.device)
        saved = [self.bases[row.spec.key] for _, row in ready]
        base = torch.stack([s.base for s in saved]).to(logits.device)

        def per_row(name: str, dtype: torch.dtype = logits.dtype) -> torch.Tensor:
            values = [getattr(row.spec, name) for _, row in ready]
            return torch.tensor(values, dtype=dtype, device=logits.device)

        w = self._mixing_weights(logits, idx, ready, saved, per_row("mixing_weight"))
        banned = None
        talk_banned = [_talk_banned(row) for _, row in ready]
        if any(talk_banned):
            banned = torch.zeros(len(ready), logits.shape[1], dtype=torch.bool)
            for k, ids in enumerate(talk_banned):
                banned[k, list(ids)] = True
            banned = banned.to(logits.device)
        logits[idx] = tensor_ops.talk_logits(
            base,
            logits[idx],
            w,
            per_row("temperature"),
            per_row("top_p"),
            top_k=per_row("top_k", torch.long),
            min_p=per_row("min_p"),
            banned=banned,
        )

    @staticmethod
    def _mixing_weights(
        logits: torch.Tensor,
        idx: torch.Tensor,
        ready: list[tuple[int, _Row]],
        saved: list[_Saved],
        requested: torch.Tensor,
    ) -> torch.Tensor:
        """The request's w, replaced by the checkpoint head's w on rows that ask for it."""
        head_rows = [k for k, (_, row) in enumerate(ready) if row.spec.mixing_source == "head"]
        if not head_rows:
            return requested
        model = hidden.head()
        if model is None or any(saved[k].h_base is None for k in head_rows):
            raise RuntimeError(
                "Quiet-STaR: a request asked for the checkpoint's mixing head, but the served "
                "model has none (the gateway only asks when it serves QuietStarMistralForCausalLM)"
            )
        h_end = hidden.latest(logits.shape[0])[idx[head_rows]]
        h_base = torch.stack([saved[k].h_base for k in head_rows]).to(h_end.device)
        w = requested.clone()
        w[head_rows] = model.mixing_weight(h_base, h_end).to(w.device, w.dtype)
        return w

    @staticmethod
    def _force(logits: torch.Tensor, rows: list[tuple[int, _Row]], token_ids: list[int]) -> None:
        idx = torch.tensor([i for i, _ in rows], device=logits.device)
        targets = torch.tensor(token_ids, device=logits.device)
        logits[idx] = tensor_ops.force_tokens(logits[idx], targets)


def _talk_banned(row: _Row) -> tuple[int, ...]:
    """Ids the talk token cannot be; a continuation request also bans its stop ids until
    `min_tokens` talk tokens follow the original context (the visible text, then `offset`
    round tokens, is the runner's prompt there, so its length counts the talk tokens so far)."""
    spec = row.spec
    if spec.continuation and row.context - row.offset - spec.context_len < spec.min_tokens:
        return (*spec.talk_banned_token_ids, *spec.stop_token_ids)
    return spec.talk_banned_token_ids


def _pad(ids: tuple[int, ...], width: int) -> list[int]:
    """Repeat the last id so every row bans `width` ids (banning one twice is harmless)."""
    return list(ids) + [ids[-1]] * (width - len(ids))
