"""`baseline`: plain sampling, exactly what `vllm serve` would return for the same body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from vllm.sampling_params import RequestOutputKind

from server.core.requests import ChoiceDelta, MethodInput
from server.methods.base import Method, MethodContext
from server.methods.streams import merge_streams


class Baseline(Method):
    name = "baseline"
    prompt_logprobs = True  # one engine call per choice, over the prompt

    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        return merge_streams([self._sample(ctx, inp, i) for i in range(inp.n)])

    async def _sample(
        self, ctx: MethodContext, inp: MethodInput, index: int
    ) -> AsyncIterator[ChoiceDelta]:
        params = inp.sampling.to_vllm(seed_offset=index, output_kind=RequestOutputKind.DELTA)
        request_id = f"{ctx.prompt_id}-{index}"
        calls = ctx.engine.generate(inp.prompt_token_ids, params, ctx.meter, request_id=request_id)
        async with aclosing(calls) as outputs:  # closed (charged) when the consumer stops
            async for output in outputs:
                completion = output.outputs[0]
                yield ChoiceDelta(
                    index=index,
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    logprobs=list(completion.logprobs) if completion.logprobs else None,
                    finish_reason=completion.finish_reason if output.finished else None,
                    stop_reason=completion.stop_reason if output.finished else None,
                    # all at once, on the first output (vLLM's DELTA kind)
                    prompt_logprobs=list(output.prompt_logprobs)
                    if output.prompt_logprobs
                    else None,
                )
