"""Quiet-STaR continuation: one engine request per sequence, the thought's KV rolled back.

Why a scheduler: a Quiet-STaR token is `start, t thought tokens, end` decoded after the text,
then the *talk* token, sampled from the mix of the base row and the `end` row; the thought
must then vanish from the context. Served as one engine request per output token, every token
re-prefills the partial last KV block and pays a request's overheads. This scheduler keeps
one request per sequence and, after each talk token, rolls the request back to its visible
tokens (as vLLM does for rejected speculative tokens), so every output token costs exactly
`s + t + e + 1` forward positions (talk/base, the start delimiter's s tokens, t thoughts, the
end delimiter's e tokens; `t + 3` with one-token delimiters, one engine step each).
docs/quiet_star.md has the full argument; the pieces:

* **Scheduler side** (here). Thought tokens are appended like any output (vLLM schedules
  them); at the talk token the round's `start..end` are deleted from the request's token
  lists and block hashes, the talk token takes their place at the first thought position, and
  `num_computed_tokens` is set so that the talk token is computed next, at the position
  `start` had: its row is the next token's base distribution. Stop checks (EOS, stop ids,
  `max_tokens`, `max_model_len`) run on visible tokens only; a thought token never stops the
  request. Every round token is still emitted to the frontend, so vLLM's own generation
  counter counts `s + t + e + 1` per output token; the gateway keeps only the talk tokens.
* **Prefix cache.** Blocks are cached only up to the visible length: a block holding thought
  KV is never hashed into the pool (its slots are overwritten after the rollback, and a cache
  hit on it from another request would share a block we are about to rewrite).
* **Worker side.** The model runner keeps its own token ids per request and only ever appends
  or truncates them. After a rollback the talk token must sit where `start` was, so the next
  step re-announces the request to the runner as new (finished + new with the same id, a case
  the runner documents): its prompt is the visible text, its computed length and KV blocks are
  kept. The runner then sees a fresh request whose output list restarts at 0 each round, which
  is exactly what the logits processor's step machine (kernels/quiet_star/processor.py) keys
  off. A seeded request gets the seed `seed + round`, so rounds do not replay one random
  stream (and the same seed gives the same text); a re-announcement inside a round gets a
  seed of its own, derived from the same seed.
* **Forced tokens share a step.** A multi-token delimiter is known before the model runs: the
  rest of the start delimiter and the whole end delimiter are appended here as soon as the
  token before them is sampled, and the next step computes them together with that token (one
  forward pass, several positions, the logits row at the last). The runner learns of them by a
  re-announcement, with `extra_args[ROUND_STEP_KEY]` telling the processor where in the round
  its first sample falls. With the default `<think>` strings a token then takes `t + 2` steps
  instead of `t + 7`. A re-announcement is not free (see `MIN_FUSED_TOKENS`), so a single
  forced token (a one-token delimiter, as in a Quiet-STaR checkpoint) is sampled as forced:
  `t + 3` steps. Appended tokens are streamed like sampled ones (with a logprobs row saying
  "forced", logprob 0), so vLLM's counters still count every position.

Only requests whose `extra_args["quiet_star"]` says `continuation` are touched; everything else
is vLLM's scheduler unchanged. Async scheduling must be off (the CPU backend always turns it
off; the gateway turns it off when it installs this scheduler).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
from vllm.v1.core.sched.output import NewRequestData, SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.sched.utils import check_stop
from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec

SCHEDULER_FQCN = "kernels.quiet_star.scheduler.QuietStarScheduler"

# Forced tokens are appended (and computed with the step before them) only in runs of at least
# this many. Appending costs a re-announcement, and on the CPU backend a step with a
# re-announced request measured as slow as an extra step or more (docs/benchmarks.md): fusing
# a single token (a one-token end delimiter) saved nothing there, fusing a multi-token
# delimiter saves several steps.
MIN_FUSED_TOKENS = 2


@dataclass
class _Sequence:
    """Per-request state of a continuation request."""

    spec: QuietStarSpec
    visible: int  # tokens of the visible text (prompt + talk tokens); thoughts follow it
    seed: int | None
    step: int = 0  # round index of the next token (start.., thought.., end.., talk)
    round: int = 0  # completed output tokens

    def forced_after_sample(self) -> tuple[int, ...]:
        """The forced tokens appended right after the token sampled now: a run of at least
        `MIN_FUSED_TOKENS` (none at the talk token; a shorter run is sampled as forced)."""
        if self.step >= self.spec.steps - 1:
            return ()
        forced = self.spec.forced_from(self.step + 1)
        return forced if len(forced) >= MIN_FUSED_TOKENS else ()

    def runner_seed(self) -> int | None:
        """The seed of the runner's request from here: `seed + round` at a round's start (the
        per-token path's seed for that token), a distinct one inside a round."""
        if self.seed is None:
            return None
        if self.step == 0:
            return self.seed + self.round
        return (self.seed + self.round + (self.step << 40)) % (1 << 63)


class QuietStarScheduler(Scheduler):
    """vLLM's scheduler plus the per-token rollback of Quiet-STaR continuation requests."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.scheduler_config, "async_scheduling", False):
            raise ValueError("the Quiet-STaR scheduler needs async scheduling off")
        self._sequences: dict[str, _Sequence] = {}
        self._reannounce: set[str] = set()
        coordinator = self.kv_cache_manager.coordinator
        cache_blocks = coordinator.cache_blocks

        def cache_visible_blocks(request: Request, num_tokens: int) -> None:
            sequence = self._sequences.get(request.request_id)
            if sequence is not None:
                num_tokens = min(num_tokens, sequence.visible)
            cache_blocks(request, num_tokens)

        coordinator.cache_blocks = cache_visible_blocks

    # -- requests in and out ----------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        params = request.sampling_params
        spec = QuietStarSpec.from_extra_args(params.extra_args) if params is not None else None
        if spec is not None and spec.continuation:
            self._sequences[request.request_id] = _Sequence(
                spec, visible=request.num_tokens, seed=params.seed
            )
        super().add_request(request)

    def _free_request(self, request: Request, *args, **kwargs):
        self._sequences.pop(request.request_id, None)
        self._reannounce.discard(request.request_id)
        return super()._free_request(request, *args, **kwargs)

    # -- tokens -------------------------------------------------------------------------------
    def _update_request_with_output(
        self, request: Request, new_token_ids: list[int], is_stale: bool = False
    ) -> tuple[list[int], bool]:
        sequence = self._sequences.get(request.request_id)
        if sequence is None:
            return super()._update_request_with_output(request, new_token_ids, is_stale)
        if len(new_token_ids) != 1:  # one sampled token per step without spec decode
            raise RuntimeError(f"Quiet-STaR continuation got {len(new_token_ids)} tokens/step")
        token = new_token_ids[0]
        if sequence.step < sequence.spec.steps - 1:  # start, thought or end: no stop checks
            forced = sequence.forced_after_sample()
            request.append_output_token_ids([token, *forced])
            sequence.step += 1 + len(forced)
            if forced:  # the runner has not seen them: tell it at the next step
                self._reannounce.add(request.request_id)
            if request.num_tokens >= self.max_model_len:  # the round cannot finish
                request.status = RequestStatus.FINISHED_LENGTH_CAPPED
                return [token, *forced], True
            return [token, *forced], False
        self._roll_back(request, sequence, token)
        stopped = check_stop(request, self.max_model_len)
        if not stopped and request.num_tokens + sequence.spec.steps > self.max_model_len:
            # the next round would need positions past the limit: end here, before it starts
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            stopped = True
        return new_token_ids, stopped

    def _roll_back(self, request: Request, sequence: _Sequence, talk: int) -> None:
        """Replace the round's `start..end` with the talk token; the talk token is computed
        next, at the position `start` had."""
        keep = sequence.visible
        del request._all_token_ids[keep:]
        del request._output_token_ids[keep - request.num_prompt_tokens :]
        del request.block_hashes[keep // self.hash_block_size :]
        request.append_output_token_ids(talk)  # re-hashes a block the talk token completes
        request.num_computed_tokens = keep
        sequence.visible = keep + 1
        sequence.step = 0
        sequence.round += 1
        self._reannounce.add(request.request_id)

    def _preempt_request(self, request: Request, *args, **kwargs) -> None:
        super()._preempt_request(request, *args, **kwargs)
        if request.request_id in self._sequences:
            # The runner's copy of the request may lack appended forced tokens: on resume it
            # is re-announced like after a rollback.
            self._reannounce.add(request.request_id)

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ):
        logprobs = model_runner_output.logprobs
        if self._sequences and logprobs is not None and logprobs.cu_num_generated_tokens is None:
            model_runner_output.logprobs = self._with_forced_rows(model_runner_output, logprobs)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _with_forced_rows(
        self, output: ModelRunnerOutput, logprobs: LogprobsLists
    ) -> LogprobsLists:
        """vLLM's output path reads one logprobs row per streamed token: add a row for each
        forced token appended after this step's sample (the token itself, logprob 0, rank 1;
        the other candidates -inf: a forced token has probability 1)."""
        forced: dict[int, tuple[int, ...]] = {}
        for req_id, index in output.req_id_to_index.items():
            sequence = self._sequences.get(req_id)
            if sequence is not None and output.sampled_token_ids[index]:
                tokens = sequence.forced_after_sample()
                if tokens:
                    forced[index] = tokens
        if not forced:
            return logprobs
        counts = np.ones(len(logprobs.logprobs), dtype=np.int64)
        for index, tokens in forced.items():
            counts[index] += len(tokens)
        rows = np.repeat(np.arange(len(counts)), counts)
        token_ids = logprobs.logprob_token_ids[rows].copy()
        values = logprobs.logprobs[rows].copy()
        ranks = np.asarray(logprobs.sampled_token_ranks)[rows].copy()
        starts = np.concatenate([[0], np.cumsum(counts)])
        for index, tokens in forced.items():
            for k, token in enumerate(tokens, start=starts[index] + 1):
                token_ids[k, 0], values[k, 0], ranks[k] = token, 0.0, 1
                values[k, 1:] = -np.inf
        return LogprobsLists(token_ids, values, ranks, starts[:-1].tolist())

    # -- the model runner's view ----------------------------------------------------------
    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        output = super().schedule(*args, **kwargs)
        if self._reannounce:
            self._reannounce_rolled_back(output)
        return output

    def _reannounce_rolled_back(self, output: SchedulerOutput) -> None:
        """Send each rolled-back request (or one with appended forced tokens) that runs this
        step to the runner as finished + new: the runner's token ids can only grow or shrink
        at the end and only by what it sampled; the talk token must replace `start` in the
        middle. (Model Runner V2 sends a resumed request as new already, with the original
        prompt: that entry is rewritten the same way.)"""
        new_reqs = output.scheduled_new_reqs
        for i, new in enumerate(new_reqs):
            if new.req_id in self._reannounce:
                self._reannounce.discard(new.req_id)
                new_reqs[i] = self._runner_request(new.req_id, new.num_computed_tokens)
        cached = output.scheduled_cached_reqs
        for i in reversed(range(len(cached.req_ids))):
            req_id = cached.req_ids[i]
            if req_id not in self._reannounce:
                continue
            self._reannounce.discard(req_id)
            new_reqs.append(self._runner_request(req_id, cached.num_computed_tokens[i]))
            output.finished_req_ids.add(req_id)
            for column in (
                cached.req_ids,
                cached.new_block_ids,
                cached.num_computed_tokens,
                cached.num_output_tokens,
            ):
                del column[i]
            if cached.new_token_ids:
                del cached.new_token_ids[i]
            cached.resumed_req_ids.discard(req_id)
            cached.all_token_ids.pop(req_id, None)

    def _runner_request(self, req_id: str, num_computed_tokens: int) -> NewRequestData:
        """The request as the runner must see it from here: its prompt is every token so far
        (the visible text, then the round's tokens), its seed the round's, and the round
        index of its first sample in `extra_args` when that is not 0."""
        request = self.requests[req_id]
        sequence = self._sequences[req_id]
        params = copy.copy(request.sampling_params)
        params.seed = sequence.runner_seed()
        if sequence.step:
            params.extra_args = {**params.extra_args, ROUND_STEP_KEY: sequence.step}
        prompt = list(request.all_token_ids)
        is_token_ids = request.prompt_is_token_ids
        new = NewRequestData.from_request(
            request,
            self.kv_cache_manager.get_block_ids(req_id),
            prefill_token_ids=prompt if self.use_v2_model_runner else None,
        )
        return dataclasses.replace(
            new,
            prompt_token_ids=prompt,
            sampling_params=params,
            num_computed_tokens=num_computed_tokens,
            prompt_is_token_ids=(
                None
                if is_token_ids is None
                else [*is_token_ids, *([True] * (len(prompt) - len(is_token_ids)))]
            ),
        )
