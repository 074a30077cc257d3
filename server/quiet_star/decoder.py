"""The Quiet-STaR decode loop: the text grows by one *talk* token per thinking step.

Two ways to run it (the server's `--quiet-star-engine`):

* **continuation** (default): one engine request per sequence. Our scheduler
  (kernels/quiet_star/scheduler.py) rolls each token's thought back after its talk token, so
  the visible context never holds a thought and a token costs exactly `s + t + e + 1`
  positions (`step_positions`, kernels/quiet_star/spec.py; `t + 3` with one-token delimiters;
  a multi-token delimiter's forced tokens share the engine step before them).
  The engine streams every round token (start, thought, end, talk: `s + t + e + 1` per output
  token, which is what vLLM's own counters see); this loop keeps the talk tokens.
* **per_token**: one engine request per output token whose prompt is the visible text so far
  and whose `max_tokens` is the step count (prefix caching serves the shared prompt, so a
  token costs `s + t + e + 1` positions plus the re-prefilled partial KV block). Kept as the
  baseline the benchmark compares against, and for `think="step_start"`, which thinks once per step
  and decodes the rest of the step plainly (few engine requests per step already).

Either way `extra_args["quiet_star"]` drives our logits processor (kernels/quiet_star), which
forces the delimiters, samples the thought and mixes the talk token. Near `max_model_len` a
step that does not fit entirely is not started (the text ends with finish_reason "length"),
and a step the engine cut short is dropped: a thought token is never returned as text.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from kernels.quiet_star.spec import QuietStarSpec, step_positions
from server.core.budget import CallWatch, watched
from server.core.errors import APIError
from server.core.request_ids import engine_request_id
from server.core.requests import SamplingSpec
from server.core.seeds import call_seeds
from server.core.usage import UsageMeter
from server.engines.base import PolicyEngine
from server.quiet_star.delimiters import resolve_delimiters
from server.quiet_star.params import QuietStarParams
from server.quiet_star.served_model import DEFAULT_MIXING_WEIGHT, served_model


@dataclass
class Piece:
    """New visible tokens (and the thoughts behind them, if they were thought)."""

    token_ids: list[int]
    thoughts: list[list[int]] = field(default_factory=list)
    steps: list[list[int]] = field(default_factory=list)  # every token each engine call made
    eos: bool = False  # the sequence ended here (EOS or a stop token) in a plain segment
    step_end: bool = False  # a plain segment ended at one of the step-ending strings
    logprobs: list[dict] | None = None  # per token: vLLM's {id: Logprob}, finite entries only


def until_stop(token_ids: list[int], stop_ids: frozenset[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first stop token (EOS, or a checkpoint's BOS), and
    whether there was one. Kept as vLLM's OpenAI server keeps a stop token id: in `token_ids`,
    `usage.completion_tokens` and the logprobs, and in the text unless it is a special token
    (both the gateway's detokenizer and `engine.decode` skip those). A stop *string* is another
    matter: the text ends before it (IncrementalText)."""
    for index, token in enumerate(token_ids):
        if token in stop_ids:
            return token_ids[: index + 1], True
    return token_ids, False


class QuietStarDecoder:
    """Produces visible tokens for one sequence; stopping is the caller's business.

    It needs the engine, the meter its calls are charged to and the request's sampling, not
    the method's context: the methods build on it, it does not build on them."""

    def __init__(
        self,
        engine: PolicyEngine,
        meter: UsageMeter,
        params: QuietStarParams,
        sampling: SamplingSpec,
        *,
        seed_base: int,
        request_id: str,
        choice_id: str | None = None,
        watch: CallWatch | None = None,
    ) -> None:
        self.engine, self.meter, self.params, self.sampling = engine, meter, params, sampling
        # A budget's view of the engine call in flight: every output is reported, so the
        # budget can stop the sequence within one engine step (server/core/budget.py).
        self.watch = watch
        self._stopped = False
        self.request_id = request_id  # the prompt's: engine request ids derive from it
        # Every call of this sequence extends one context: one replica's prefix cache.
        self.choice_id = choice_id
        tokenizer = engine.tokenizer
        self.model = served_model(engine)
        self.start_ids, self.end_ids = resolve_delimiters(
            tokenizer, params.start_token, params.end_token
        )
        self.thought_tokens = (
            params.thought_tokens
            if params.thought_tokens is not None
            else self.model.default_thought_tokens
        )
        if params.mixing_weight is not None:
            self.mixing_source, self.mixing_weight = "request", params.mixing_weight
        elif self.model.has_mixing_head:
            self.mixing_source, self.mixing_weight = "head", 0.0  # w comes from the head
        else:
            self.mixing_source, self.mixing_weight = "request", DEFAULT_MIXING_WEIGHT
        eos = engine.eos_token_id
        delimiters = {*self.start_ids, *self.end_ids}
        if self.model.has_mixing_head:
            # The reference bans only the thought tokens inside a thought (EOS may be thought).
            self.banned = tuple(sorted(delimiters))
            talk_banned = delimiters | set(self.model.added_token_ids)
        else:
            self.banned = tuple(sorted(delimiters | ({eos} if eos is not None else set())))
            # single-token special delimiters (e.g. <|startthought|>) are never text
            talk_banned = {
                i
                for ids in (self.start_ids, self.end_ids)
                if len(ids) == 1
                for i in ids
                if i in self.model.special_token_ids
            }
        self.talk_banned = tuple(sorted(talk_banned))
        stops = {eos, *self.model.stop_token_ids} - {None}
        self.stop_token_ids: frozenset[int] = (
            frozenset() if sampling.ignore_eos else frozenset(stops)  # type: ignore[arg-type]
        )
        self._seeds = call_seeds(seed_base)
        self.engine_calls = 0
        self.truncated = False  # stopped because the next step would pass max_model_len

    def stop(self) -> None:
        """Stop after the engine output being read: its call is aborted (and charged), a
        partial thinking step is dropped and no further call starts. A budget calls this."""
        self._stopped = True

    @property
    def steps(self) -> int:
        """Engine steps of one thinking token (start, thought, end, talk)."""
        return step_positions(len(self.start_ids), self.thought_tokens, len(self.end_ids))

    def context(self, prompt_ids: list[int]) -> list[int]:
        """The prompt as the model expects it: after BOS when its tokenizer adds one (the
        reference eval tokenizes with special tokens)."""
        bos = self.model.bos_token_id
        if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            return [bos, *prompt_ids]
        return list(prompt_ids)

    @property
    def continuation(self) -> bool:
        """One engine request per sequence (the engine's continuation scheduler is on)."""
        return bool(getattr(self.engine, "quiet_star_continuation", False))

    def spec(self, visible: int, *, context_len: int | None = None) -> QuietStarSpec:
        """The processor's arguments: for one step at `visible` tokens, or (`context_len` set)
        for a continuation request whose text starts after `context_len` tokens."""
        talk_banned = set(self.talk_banned)
        if context_len is None and visible < self.sampling.min_tokens:
            talk_banned |= self.stop_token_ids  # min_tokens: no EOS/stop token yet
        continuation = {}
        if context_len is not None:  # the processor bans stop ids until min_tokens itself
            continuation = {
                "continuation": True,
                "context_len": context_len,
                "min_tokens": self.sampling.min_tokens,
                "stop_token_ids": tuple(sorted(self.stop_token_ids)),
            }
        return QuietStarSpec(
            key=uuid.uuid4().hex,
            thought_tokens=self.thought_tokens,
            mixing_weight=self.mixing_weight,
            thought_temperature=self.params.thought_temperature,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            start_token_ids=self.start_ids,
            end_token_ids=self.end_ids,
            banned_token_ids=self.banned,
            mixing_source=self.mixing_source,
            talk_banned_token_ids=tuple(sorted(talk_banned)),
            top_k=self.sampling.top_k if self.sampling.top_k and self.sampling.top_k > 0 else 0,
            min_p=self.sampling.min_p,
            **continuation,
        )

    def _seed(self) -> int | None:
        seed = next(self._seeds)
        return seed if self.sampling.seed is not None else None

    async def think_one(self, context_ids: list[int], visible: int) -> Piece | None:
        """One Quiet-STaR step: think, then return the talk token (None: the engine cut the
        step short, so there is no talk token)."""
        spec = self.spec(visible)
        params = SamplingParams(
            n=1,
            max_tokens=spec.steps,
            temperature=1.0,  # the processor applies the real temperatures
            top_p=1.0,
            seed=self._seed(),
            ignore_eos=True,  # a forced or thought token must not end the request
            logprobs=self.sampling.logprobs,
            detokenize=False,
            skip_special_tokens=False,
            extra_args=spec.to_extra_args(),
            # one output per engine step when a budget watches, else only the last
            output_kind=RequestOutputKind.FINAL_ONLY
            if self.watch is None
            else RequestOutputKind.DELTA,
        )
        tokens: list[int] = []
        logprobs_seen: list[dict] = []
        call = self.engine.generate(
            context_ids,
            params,
            self.meter,
            request_id=engine_request_id(self.request_id),
            choice_id=self.choice_id,
        )
        outputs = watched(call, self.watch, len(context_ids))
        async with aclosing(outputs):
            async for output in outputs:
                completion = output.outputs[0]
                tokens += completion.token_ids
                logprobs_seen += completion.logprobs or []
                if self._stopped:
                    break
        self.engine_calls += 1
        self.meter.add_thought_tokens(min(len(tokens), spec.thought_steps))
        if len(tokens) != spec.steps:  # cut short (by the engine, or by `stop`)
            return None
        _check_talk(spec, tokens[-1])
        s = len(spec.start_token_ids)
        logprobs = None
        if self.sampling.logprobs is not None and logprobs_seen:
            logprobs = [_finite(logprobs_seen[-1])]
        return Piece(
            [tokens[-1]], [tokens[s : s + spec.thought_tokens]], [tokens], logprobs=logprobs
        )

    async def continue_sequence(
        self, context_ids: list[int], max_tokens: int
    ) -> AsyncIterator[Piece]:
        """Every-token thinking as one engine request: `max_tokens` visible tokens at most.

        The engine streams `steps` tokens per output token (start, thought, end, talk); the
        talk tokens are the text. It stops itself on a stop token, at `max_tokens` talk tokens,
        and before a step that would pass `max_model_len` (finish_reason "length" with fewer
        tokens: `truncated`)."""
        spec = self.spec(0, context_len=len(context_ids))
        params = SamplingParams(
            n=1,
            max_tokens=max_tokens,  # the scheduler counts visible (talk) tokens
            temperature=1.0,  # the processor applies the real temperatures
            top_p=1.0,
            seed=self._seed(),  # round k samples with seed + k (the per-token path's seeds)
            ignore_eos=True,  # a thought token must not end the request ...
            stop_token_ids=sorted(self.stop_token_ids),  # ... a talk token may
            logprobs=self.sampling.logprobs,
            detokenize=False,
            skip_special_tokens=False,
            extra_args=spec.to_extra_args(),
            output_kind=RequestOutputKind.DELTA,
        )
        self.engine_calls += 1
        steps, s, t = spec.steps, len(spec.start_token_ids), spec.thought_tokens
        round_ids: list[int] = []
        produced = 0
        finish = None
        call = self.engine.generate(
            context_ids,
            params,
            self.meter,
            request_id=engine_request_id(self.request_id),
            choice_id=self.choice_id,
            rollback_steps=steps,
        )
        outputs = watched(call, self.watch, len(context_ids), rollback_steps=steps)
        async with aclosing(outputs):  # a caller that stops early aborts the call
            async for output in outputs:
                completion = output.outputs[0]
                finish = completion.finish_reason
                pieces: list[Piece] = []
                for k, token in enumerate(completion.token_ids):
                    round_ids.append(token)
                    if len(round_ids) < steps:
                        continue
                    _check_talk(spec, token)
                    logprobs = None
                    if self.sampling.logprobs is not None and completion.logprobs:
                        logprobs = [_finite(completion.logprobs[k])]
                    pieces.append(
                        Piece([token], [round_ids[s : s + t]], [round_ids], logprobs=logprobs)
                    )
                    self.meter.add_thought_tokens(steps - 1)
                    round_ids = []
                for piece in pieces:
                    produced += 1
                    yield piece
                if self._stopped:  # the tokens read are kept; the rest is aborted
                    break
        self.meter.add_thought_tokens(len(round_ids))  # a round the engine cut short
        if finish == "length" and produced < max_tokens and not self._stopped:
            self.truncated = True  # the next step would not have fit in max_model_len

    async def plain(
        self, context_ids: list[int], max_tokens: int, stops: list[str], visible: int
    ) -> AsyncIterator[Piece]:
        """Plain decoding to the end of the current step (the cheaper `step_start` mode)."""
        params = self.sampling.to_vllm(
            max_tokens=max_tokens,
            min_tokens=min(max(self.sampling.min_tokens - visible, 0), max_tokens),
            stop=stops,
            stop_token_ids=sorted(self.stop_token_ids),
            include_stop_str_in_output=True,
            seed=self._seed(),
            logprobs=self.sampling.logprobs,
            output_kind=RequestOutputKind.DELTA,
        )
        self.engine_calls += 1
        call = self.engine.generate(
            context_ids,
            params,
            self.meter,
            request_id=engine_request_id(self.request_id),
            choice_id=self.choice_id,
        )
        outputs = watched(call, self.watch, len(context_ids))
        async with aclosing(outputs):  # a caller that stops early aborts the call
            async for output in outputs:
                completion = output.outputs[0]
                ended = completion.finish_reason == "stop" and not isinstance(
                    completion.stop_reason, str
                )
                ids = list(completion.token_ids)
                step_end = isinstance(completion.stop_reason, str)
                if ids or ended or step_end:
                    logprobs = None
                    if completion.logprobs:
                        logprobs = [_finite(top) for top in completion.logprobs]
                    yield Piece(ids, eos=ended, step_end=step_end, logprobs=logprobs)
                if self._stopped:
                    break

    async def tokens(
        self, prompt_ids: list[int], max_tokens: int, step_ends: list[str] | None = None
    ) -> AsyncIterator[Piece]:
        """Visible tokens, up to `max_tokens`; the caller stops early on EOS or stop strings
        (closing this generator aborts the engine request in flight). In `step_start` mode a
        step ends at any of `step_ends` (default: the `step_delimiter` parameter). Ends early
        (with `truncated` set) where the next step would not fit in `max_model_len`."""
        visible: list[int] = []
        step_ends = step_ends or [self.params.step_delimiter]
        tokenizer = self.engine.tokenizer
        context = self.context(prompt_ids)
        limit = self.engine.max_model_len
        if self.continuation and self.params.think == "every_token":
            if limit - len(context) < self.steps:  # not even one step fits
                self.truncated = True
                return
            # Nested generators are closed explicitly: `async for` left early (the caller
            # closing this one) would leave them, and their engine call, to the collector.
            async with aclosing(self.continue_sequence(context, max_tokens)) as pieces:
                async for piece in pieces:
                    yield piece
            return
        at_step_start = True
        while len(visible) < max_tokens and not self._stopped:
            room = limit - len(context) - len(visible)
            if self.params.think == "every_token" or at_step_start:
                if room < self.steps:  # the talk token would need positions past the limit
                    self.truncated = True
                    return
                piece = await self.think_one(context + visible, len(visible))
                if piece is None:
                    self.truncated = not self._stopped  # else a budget stopped it
                    return
                visible += piece.token_ids
                yield piece
                text = tokenizer.decode(piece.token_ids)
                at_step_start = any(text.endswith(end) for end in step_ends)
                continue
            remaining = min(max_tokens - len(visible), room)
            if remaining <= 0:
                self.truncated = True
                return
            plain = self.plain(context + visible, remaining, step_ends, len(visible))
            async with aclosing(plain) as pieces:
                async for piece in pieces:
                    visible += piece.token_ids
                    yield piece
                    if piece.eos:
                        return
            at_step_start = True


def _check_talk(spec: QuietStarSpec, token: int) -> None:
    """A talk token the spec bans is the step machine's failure sentinel: the engine lost the
    step's base distribution (kernels/quiet_star/step_machine.py), so the token was never
    mixed. Fail this request rather than return it."""
    if token in spec.talk_banned_token_ids:
        raise APIError(
            "Quiet-STaR lost a thinking step's base distribution in the engine (heavy "
            "preemption); the request is failed rather than answered with an unmixed token",
            status=500,
        )


def _finite(top: dict) -> dict:
    """Drop tokens the talk distribution excludes (-inf: masked, or cut by top-p/top-k):
    they have probability 0 and JSON has no -inf."""
    return {i: lp for i, lp in top.items() if math.isfinite(lp.logprob)}
