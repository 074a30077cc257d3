"""The Quiet-STaR decode loop: the text grows by one *talk* token per engine request.

Each request's prompt is the visible text so far (token ids), `max_tokens` = the step count
of one thinking step, engine temperature 1, and `extra_args["quiet_star"]` for our logits
processor (kernels/quiet_star), which forces the delimiters, samples the thought and mixes
the talk token. Only the talk token is appended: the thought never enters the visible
context, as in the original. Prefix caching serves the shared prompt, so a token costs about
`t + 3` forward tokens plus the partial KV block tail.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from kernels.quiet_star.spec import QuietStarSpec
from server.methods.base import MethodContext, SamplingSpec
from server.quiet_star.delimiters import resolve_delimiters
from server.quiet_star.params import QuietStarParams
from server.tracing import engine_request_id


@dataclass
class Piece:
    """New visible tokens (and the thoughts behind them, if they were thought)."""

    token_ids: list[int]
    thoughts: list[list[int]] = field(default_factory=list)
    steps: list[list[int]] = field(default_factory=list)  # every token each engine call made
    eos: bool = False  # the sequence ended here (EOS or a stop token) in a plain segment
    step_end: bool = False  # a plain segment ended at one of the step-ending strings


class QuietStarDecoder:
    """Produces visible tokens for one sequence; stopping is the caller's business."""

    def __init__(
        self, ctx: MethodContext, params: QuietStarParams, sampling: SamplingSpec, seed_base: int
    ) -> None:
        self.ctx, self.params, self.sampling = ctx, params, sampling
        tokenizer = ctx.engine.tokenizer
        self.start_ids, self.end_ids = resolve_delimiters(
            tokenizer, params.start_token, params.end_token
        )
        eos = ctx.engine.eos_token_id
        self.banned = tuple(
            sorted({*self.start_ids, *self.end_ids, *([eos] if eos is not None else [])})
        )
        self._seeds = itertools.count(seed_base * 1_000_003)
        self.engine_calls = 0

    def spec(self) -> QuietStarSpec:
        return QuietStarSpec(
            key=uuid.uuid4().hex,
            thought_tokens=self.params.thought_tokens,
            mixing_weight=self.params.mixing_weight,
            thought_temperature=self.params.thought_temperature,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            start_token_ids=self.start_ids,
            end_token_ids=self.end_ids,
            banned_token_ids=self.banned,
        )

    def _seed(self) -> int | None:
        seed = next(self._seeds)
        return seed if self.sampling.seed is not None else None

    async def think_one(self, context_ids: list[int]) -> Piece:
        """One Quiet-STaR step: think, then return the talk token."""
        spec = self.spec()
        params = SamplingParams(
            n=1,
            max_tokens=spec.steps,
            temperature=1.0,  # the processor applies the real temperatures
            top_p=1.0,
            seed=self._seed(),
            ignore_eos=True,  # a forced or thought token must not end the request
            detokenize=False,
            skip_special_tokens=False,
            extra_args=spec.to_extra_args(),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in self.ctx.engine.generate(
            context_ids, params, self.ctx.meter, request_id=engine_request_id(self.ctx.request_id)
        ):
            final = output
        self.engine_calls += 1
        tokens = list(final.outputs[0].token_ids)
        self.ctx.meter.thought_tokens += spec.thought_steps
        s = len(spec.start_token_ids)
        return Piece([tokens[-1]], [tokens[s : s + spec.thought_tokens]], [tokens])

    async def plain(
        self, context_ids: list[int], max_tokens: int, stops: list[str]
    ) -> AsyncIterator[Piece]:
        """Plain decoding to the end of the current step (the cheaper `step_start` mode)."""
        params = self.sampling.to_vllm(
            max_tokens=max_tokens,
            stop=stops,
            include_stop_str_in_output=True,
            seed=self._seed(),
            logprobs=None,
            output_kind=RequestOutputKind.DELTA,
        )
        self.engine_calls += 1
        async for output in self.ctx.engine.generate(
            context_ids, params, self.ctx.meter, request_id=engine_request_id(self.ctx.request_id)
        ):
            completion = output.outputs[0]
            ended = completion.finish_reason == "stop" and not isinstance(
                completion.stop_reason, str
            )
            ids = list(completion.token_ids)
            step_end = isinstance(completion.stop_reason, str)
            if ids or ended or step_end:
                yield Piece(ids, eos=ended, step_end=step_end)

    async def tokens(
        self, prompt_ids: list[int], max_tokens: int, step_ends: list[str] | None = None
    ) -> AsyncIterator[Piece]:
        """Visible tokens, up to `max_tokens`; the caller stops early on EOS or stop strings
        (closing this generator aborts the engine request in flight). In `step_start` mode a
        step ends at any of `step_ends` (default: the `step_delimiter` parameter)."""
        visible: list[int] = []
        step_ends = step_ends or [self.params.step_delimiter]
        tokenizer = self.ctx.engine.tokenizer
        at_step_start = True
        while len(visible) < max_tokens:
            if self.params.think == "every_token" or at_step_start:
                piece = await self.think_one(prompt_ids + visible)
                visible += piece.token_ids
                yield piece
                text = tokenizer.decode(piece.token_ids)
                at_step_start = any(text.endswith(end) for end in step_ends)
                continue
            remaining = max_tokens - len(visible)
            async for piece in self.plain(prompt_ids + visible, remaining, step_ends):
                visible += piece.token_ids
                yield piece
                if piece.eos:
                    return
            at_step_start = True
