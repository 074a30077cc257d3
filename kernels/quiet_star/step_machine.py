"""The Quiet-STaR step machine: what one round step does to a batch row's logits.

Why its own module: vLLM has two model-runner interfaces for logits processors (V1, the one
the CPU backend always uses, and Model Runner V2, the GPU default), and they differ only in
how a processor learns which request sits in which logits row and how far it is into its
round. Both adapters (kernels/quiet_star/processor.py, processor_v2.py) reduce that to a list
of `(logits row, RoundRow)` pairs and hand it here, so the algorithm exists once:

| step (phase)  | this row's logits become                                             |
|---------------|----------------------------------------------------------------------|
| start, 1st    | saved as the *base* distribution; forced to the thought-start token |
| start, rest   | forced to the next token of a multi-token start delimiter           |
| thought (t)   | scaled by the thought temperature; start/end/EOS banned             |
| end           | forced to the thought-end token(s)                                  |
| talk          | mix(base, post-thought), mask, user temperature/min-p/top-k/top-p   |
| talk, no base | forced to the first talk-banned id: the request's failure sentinel   |

The mixing weight w is the request's (`mixing_weight`), or, for `mixing_source == "head"`,
the served checkpoint's learned head evaluated on the post-norm hidden states of the step-0
row (h_base) and the talk row (h_end): the model publishes the hidden state of every logits
row (kernels/quiet_star/hidden.py) and the machine keeps h_base next to the base distribution,
under the request's `key` (not its batch row or slot, which change under preemption).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from vllm import SamplingParams

from kernels.quiet_star import hidden, tensor_ops
from kernels.quiet_star.spec import QuietStarSpec

logger = logging.getLogger(__name__)

# Bases of requests that left the batch unfinished (preempted or aborted), kept for their
# return on top of one per running request; bounded so aborted requests cannot leak memory.
MAX_PARKED_BASES = 256


def validate_quiet_star_params(sampling_params: SamplingParams) -> None:
    """Refuse, at admission, arguments the step machine cannot run (both runner interfaces)."""
    spec = QuietStarSpec.from_extra_args(sampling_params.extra_args)
    if spec is None:
        return
    if spec.continuation:
        return  # a whole sequence: the scheduler rolls each token's thought back
    if sampling_params.max_tokens is not None and sampling_params.max_tokens > spec.steps:
        raise ValueError(f"a Quiet-STaR request runs at most {spec.steps} steps (s + t + e + 1)")


class RoundRow(Protocol):
    """What the machine needs to know about a row's request this step."""

    spec: QuietStarSpec
    offset: int  # round tokens already in the runner's prompt (a re-announced continuation)
    context: int  # the request's prompt length in the runner

    @property
    def step(self) -> int:
        """The round index of the token this row samples."""
        ...


@dataclass
class _Saved:
    """What step 0 leaves for the talk step of the same request."""

    base: torch.Tensor  # log_softmax of the base logits (full vocabulary)
    h_base: torch.Tensor | None  # post-norm hidden state of that row (head mixing only)


class StepMachine:
    """The per-row state machine plus the saved base distributions, bounded in number."""

    def __init__(self, max_saved: int) -> None:
        self.bases: OrderedDict[str, _Saved] = OrderedDict()
        self.max_saved = max_saved

    def forget(self, key: str) -> None:
        self.bases.pop(key, None)

    def trim(self) -> None:
        """Drop the oldest saved bases beyond the bound (requests aborted mid-round)."""
        while len(self.bases) > self.max_saved:
            self.bases.popitem(last=False)

    def apply(self, logits: torch.Tensor, rows: Sequence[tuple[int, RoundRow]]) -> torch.Tensor:
        start, forced, thought, talk = [], [], [], []
        forced_ids: list[int] = []
        for index, row in rows:
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

    def _start(self, logits: torch.Tensor, rows: list[tuple[int, RoundRow]]) -> None:
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
        self.trim()
        self._force(logits, rows, [row.spec.start_token_ids[0] for _, row in rows])

    def _thought(self, logits: torch.Tensor, rows: list[tuple[int, RoundRow]]) -> None:
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

    def _talk(self, logits: torch.Tensor, rows: list[tuple[int, RoundRow]]) -> None:
        ready = [(i, row) for i, row in rows if row.spec.key in self.bases]
        lost = [(i, row) for i, row in rows if row.spec.key not in self.bases]
        if lost:
            self._fail(logits, lost)
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

    def _fail(self, logits: torch.Tensor, rows: list[tuple[int, RoundRow]]) -> None:
        """Talk rows whose saved base is gone (evicted beyond the bound under heavy preemption):
        their logits are post-thought only, unmixed and unmasked, and must never become text.
        Such a row is forced to its spec's first talk-banned id, a token the talk step can
        never produce otherwise: the gateway's decoder reads it as "this request failed" and
        fails that request alone (server/quiet_star/decoder.py). Raising here would kill the
        engine and every request in it; it is the last resort for a spec with no banned id."""
        for _, row in rows:
            if not row.spec.talk_banned_token_ids:
                raise RuntimeError(
                    f"Quiet-STaR: the base distribution of request {row.spec.key} is lost and "
                    "it has no talk-banned id to report it with"
                )
            logger.error(
                "Quiet-STaR: the base distribution of request %s is lost (evicted under "
                "preemption); its talk token is replaced by the failure sentinel",
                row.spec.key,
            )
        self._force(logits, rows, [row.spec.talk_banned_token_ids[0] for _, row in rows])

    @staticmethod
    def _mixing_weights(
        logits: torch.Tensor,
        idx: torch.Tensor,
        ready: list[tuple[int, RoundRow]],
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
    def _force(
        logits: torch.Tensor, rows: list[tuple[int, RoundRow]], token_ids: list[int]
    ) -> None:
        idx = torch.tensor([i for i, _ in rows], device=logits.device)
        targets = torch.tensor(token_ids, device=logits.device)
        logits[idx] = tensor_ops.force_tokens(logits[idx], targets)


def _talk_banned(row: RoundRow) -> tuple[int, ...]:
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
