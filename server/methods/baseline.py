"""`baseline`: plain sampling, exactly what `vllm serve` would return for the same body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from vllm.sampling_params import RequestOutputKind

from server.core.budget import watched
from server.core.requests import ChoiceDelta, MethodInput
from server.methods.base import Method, MethodContext, record_budget
from server.methods.streams import merge_streams


class Baseline(Method):
    name = "baseline"
    prompt_logprobs = True  # one engine call per choice, over the prompt

    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        return merge_streams([self._sample(ctx, inp, i) for i in range(inp.n)])

    async def _sample(
        self, ctx: MethodContext, inp: MethodInput, index: int
    ) -> AsyncIterator[ChoiceDelta]:
        meter = ctx.meter.child() if inp.budget else ctx.meter
        budget = ctx.choice_budget(inp, meter)
        max_tokens = inp.sampling.max_tokens
        if budget is not None and budget.limit.tokens is not None:
            max_tokens = min(max_tokens, budget.limit.tokens)  # a cap the engine enforces
        params = inp.sampling.to_vllm(
            seed_offset=index, output_kind=RequestOutputKind.DELTA, max_tokens=max_tokens
        )
        request_id = f"{ctx.prompt_id}-{index}"
        calls = ctx.engine.generate(inp.prompt_token_ids, params, meter, request_id=request_id)
        generated = 0
        # closed (charged) when the consumer stops; a budget sees every engine step
        outputs = watched(calls, budget, len(inp.prompt_token_ids))
        async with aclosing(outputs):
            async for output in outputs:
                completion = output.outputs[0]
                generated += len(completion.token_ids)
                cut = budget.cut if budget is not None and not output.finished else None
                finished = output.finished or cut is not None
                yield ChoiceDelta(
                    index=index,
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    logprobs=list(completion.logprobs) if completion.logprobs else None,
                    finish_reason=(completion.finish_reason if cut is None else "length")
                    if finished
                    else None,
                    stop_reason=completion.stop_reason if output.finished else None,
                    # all at once, on the first output (vLLM's DELTA kind)
                    prompt_logprobs=list(output.prompt_logprobs)
                    if output.prompt_logprobs
                    else None,
                )
                if cut is not None:
                    break  # closing the call aborts it, within one engine step of the cut
        if budget is not None:
            tokens = budget.limit.tokens
            if tokens is not None and tokens < inp.sampling.max_tokens and generated >= tokens:
                budget.cut = budget.cut or "tokens"
            record_budget(ctx, self.name, budget, request_id)
