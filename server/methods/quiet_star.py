"""`quiet_star`: think before each token (Quiet-STaR), one engine request per sequence.

The thinking step runs inside the engine (kernels/quiet_star: the logits processor, and the
scheduler that rolls each thought back); this method runs the decoder
(server/quiet_star/decoder.py), turns talk tokens into streamed text, and stops at EOS, a stop
string or `max_tokens`. `n` > 1 gives independent samples (the paper votes over 8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import ClassVar

from pydantic import BaseModel

from server.core.requests import ChoiceDelta, MethodInput, RequestWork
from server.engines.base import PolicyEngine
from server.methods.base import Method, MethodContext, record_budget
from server.methods.detokenize import IncrementalText
from server.methods.streams import merge_streams
from server.quiet_star.decoder import QuietStarDecoder, until_stop
from server.quiet_star.params import QuietStarParams
from server.quiet_star.validation import check_quiet_star_input


class QuietStar(Method):
    name = "quiet_star"
    parameter_blocks: ClassVar[dict[str, type[BaseModel]]] = {"quiet_star": QuietStarParams}

    def check(self, inp: MethodInput, engine: PolicyEngine) -> None:
        check_quiet_star_input(inp, engine, self.name)

    def work(self, inp: MethodInput) -> RequestWork:
        """`n` sequences; each output token may be a whole thought (a step can be one token)."""
        params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        tokens = params.positions(inp.sampling.max_tokens)
        return RequestWork((("n", inp.n),), tokens, params.positions_note())

    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        return merge_streams([self._sample(ctx, inp, i) for i in range(inp.n)])

    async def _sample(
        self, ctx: MethodContext, inp: MethodInput, index: int
    ) -> AsyncIterator[ChoiceDelta]:
        params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        meter = ctx.meter.child() if inp.budget else ctx.meter
        budget = ctx.choice_budget(inp, meter)
        decoder = QuietStarDecoder(
            ctx.engine,
            meter,
            params,
            inp.sampling,
            seed_base=(inp.sampling.seed or 0) + index,
            request_id=ctx.prompt_id,
            choice_id=f"{ctx.prompt_id}-{index}",  # one sequence: one replica's cache
            watch=budget,  # sees every engine step of the call in flight
        )
        if budget is not None:
            # A spent budget stops the sequence within one engine step (the call is aborted),
            # and the rest is not decoded plainly either: the budget bounds compute.
            budget.on_spent = decoder.stop
        text = IncrementalText(ctx.engine.tokenizer, inp.sampling.stop)
        stop_ids = decoder.stop_token_ids  # EOS (and BOS for a checkpoint) unless ignore_eos
        thoughts: list[str] = []
        thought_ids: list[list[int]] = []
        step_ids: list[list[int]] = []
        finish = "length"
        produced = 0
        # Closing the decoder aborts (and charges) the engine request still in flight.
        async with aclosing(
            decoder.tokens(inp.prompt_token_ids, inp.sampling.max_tokens)
        ) as stream:
            async for piece in stream:
                if params.return_thoughts:
                    thoughts += [ctx.engine.decode(t) for t in piece.thoughts]
                    thought_ids += piece.thoughts
                    step_ids += piece.steps
                kept, stopped = until_stop(piece.token_ids, stop_ids)
                delta = text.add(kept)
                produced += len(kept)
                logprobs = piece.logprobs[: len(kept)] if piece.logprobs else None
                yield ChoiceDelta(index, delta.text, token_ids=kept, logprobs=logprobs)
                if stopped or delta.stopped_by is not None or piece.eos:
                    finish = "stop"
                    break
        ctx.details.setdefault("quiet_star", []).append(
            {
                "request": f"{ctx.prompt_id}-{index}",
                "engine_calls": decoder.engine_calls,
                "output_tokens": produced,
                # "head": the checkpoint's learned mixing head; "request": a fixed w
                "mixing_weight_source": decoder.mixing_source,
                **(
                    {"mixing_weight": decoder.mixing_weight}
                    if decoder.mixing_source == "request"
                    else {}
                ),
                "thought_tokens": decoder.thought_tokens,
                "thought_temperature": params.thought_temperature,
                "stopped_at_context_limit": decoder.truncated,
                **(
                    {
                        "thoughts": thoughts,
                        "thought_token_ids": thought_ids,
                        "step_token_ids": step_ids,
                    }
                    if params.return_thoughts
                    else {}
                ),
            }
        )
        if budget is not None:
            record_budget(ctx, self.name, budget, f"{ctx.prompt_id}-{index}")
        stop_reason = text.stopped_by
        yield ChoiceDelta(index, text.flush(), finish_reason=finish, stop_reason=stop_reason)
