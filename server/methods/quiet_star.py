"""`quiet_star`: think before each token (Quiet-STaR), served as one engine request per token.

The thinking step runs inside the engine (kernels/quiet_star); this method runs the loop
(server/quiet_star/decoder.py), turns talk tokens into streamed text, and stops at EOS, a stop
string or `max_tokens`. `n` > 1 gives independent samples (the paper votes over 8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

from pydantic import BaseModel

from server.detokenize import IncrementalText
from server.engine import Engine
from server.errors import APIError
from server.methods.base import ChoiceDelta, Method, MethodContext, MethodInput
from server.methods.streams import merge_streams
from server.quiet_star.decoder import QuietStarDecoder
from server.quiet_star.delimiters import resolve_delimiters
from server.quiet_star.params import QuietStarParams


class QuietStar(Method):
    name = "quiet_star"
    parameter_blocks: ClassVar[dict[str, type[BaseModel]]] = {"quiet_star": QuietStarParams}

    def check(self, inp: MethodInput, engine: Engine) -> None:
        if inp.sampling.logprobs is not None:
            raise APIError(f"logprobs is not supported by method '{self.name}'", param="logprobs")
        params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        resolve_delimiters(engine.tokenizer, params.start_token, params.end_token)

    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        return merge_streams([self._sample(ctx, inp, i) for i in range(inp.n)])

    async def _sample(
        self, ctx: MethodContext, inp: MethodInput, index: int
    ) -> AsyncIterator[ChoiceDelta]:
        params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        decoder = QuietStarDecoder(
            ctx, params, inp.sampling, seed_base=(inp.sampling.seed or 0) + index
        )
        text = IncrementalText(ctx.engine.tokenizer, inp.sampling.stop)
        eos = None if inp.sampling.ignore_eos else ctx.engine.eos_token_id
        thoughts: list[str] = []
        thought_ids: list[list[int]] = []
        step_ids: list[list[int]] = []
        finish = "length"
        produced = 0
        stream = decoder.tokens(inp.prompt_token_ids, inp.sampling.max_tokens)
        try:
            async for piece in stream:
                if params.return_thoughts:
                    thoughts += [ctx.engine.decode(t) for t in piece.thoughts]
                    thought_ids += piece.thoughts
                    step_ids += piece.steps
                if eos is not None and eos in piece.token_ids:
                    kept = piece.token_ids[: piece.token_ids.index(eos)]
                    delta = text.add(kept)
                    yield ChoiceDelta(index, delta.text, token_ids=kept)
                    finish = "stop"
                    break
                delta = text.add(piece.token_ids)
                produced += len(piece.token_ids)
                if delta.stopped_by is not None or piece.eos:
                    yield ChoiceDelta(index, delta.text, token_ids=piece.token_ids)
                    finish = "stop"
                    break
                yield ChoiceDelta(index, delta.text, token_ids=piece.token_ids)
        finally:
            await stream.aclose()  # aborts an engine request still in flight
        ctx.details.setdefault("quiet_star", []).append(
            {
                "request": f"{ctx.request_id}-{index}",
                "engine_calls": decoder.engine_calls,
                "output_tokens": produced,
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
        stop_reason = text.stopped_by
        yield ChoiceDelta(index, text.flush(), finish_reason=finish, stop_reason=stop_reason)
