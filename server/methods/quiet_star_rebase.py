"""`quiet_star+rebase`: REBASE whose step expansions are decoded with Quiet-STaR.

The combination studied in "Inference Scaling vs Reasoning" (AbdElhameed & Halim 2024). Each
tree node is one step decoded by the Quiet-STaR loop: thinking before every token (faithful,
`quiet_star.think = "every_token"`) or only before the first token of each step, the rest
decoded plainly (`"step_start"`, much cheaper). Both parameter blocks apply.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import ClassVar

from pydantic import BaseModel

from server.core.budget import CallWatch
from server.core.requests import MethodInput, RequestWork
from server.engines.base import PolicyEngine
from server.methods.base import MethodContext
from server.methods.detokenize import IncrementalText
from server.methods.rebase import GeneratedStep, Rebase
from server.quiet_star.decoder import QuietStarDecoder, until_stop
from server.quiet_star.params import QuietStarParams
from server.quiet_star.validation import check_quiet_star_input
from server.rebase.params import RebaseParams


class QuietStarRebase(Rebase):
    name = "quiet_star+rebase"
    parameter_blocks: ClassVar[dict[str, type[BaseModel]]] = {
        "rebase": RebaseParams,
        "quiet_star": QuietStarParams,
    }

    def check(self, inp: MethodInput, engine: PolicyEngine) -> None:
        super().check(inp, engine)
        check_quiet_star_input(inp, engine, self.name)

    def work(self, inp: MethodInput) -> RequestWork:
        """REBASE's sequences; each path thinks per token, or once per step (node) with
        `think="step_start"`, so at most `max_depth` thoughts."""
        tree = super().work(inp)
        rebase: RebaseParams = inp.params["rebase"]  # type: ignore[assignment]
        thinking: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        tokens = thinking.positions(inp.sampling.max_tokens, max_steps=rebase.max_depth)
        return RequestWork(tree.factors, tokens, thinking.positions_note())

    async def generate_step(
        self,
        ctx: MethodContext,
        inp: MethodInput,
        prompt: list[int],
        *,
        max_tokens: int,
        stops: list[str],
        seed: int | None,
        choice_id: str | None = None,
        priority: int = 0,
        watch: CallWatch | None = None,
    ) -> GeneratedStep:
        # `priority` (vLLM's) is not passed on: the Quiet-STaR decoder makes one engine request
        # per token, so the gateway-side order of the REBASE scheduler is what ranks its work.
        params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
        decoder = QuietStarDecoder(
            ctx.engine,
            ctx.meter,
            params,
            inp.sampling,
            seed_base=seed or 0,
            request_id=ctx.prompt_id,
            choice_id=choice_id,
            watch=watch,  # the tree's budget: it halts the search, which cancels this step
        )
        text = IncrementalText(ctx.engine.tokenizer, stops)
        stop_ids = decoder.stop_token_ids
        token_ids: list[int] = []
        finish, stop_reason = "length", None
        async with aclosing(decoder.tokens(prompt, max_tokens, step_ends=stops)) as stream:
            async for piece in stream:
                kept, stopped = until_stop(piece.token_ids, stop_ids)
                if stopped or piece.eos:  # kept as a plain REBASE step keeps vLLM's EOS
                    token_ids += kept
                    finish = "stop"
                    break
                token_ids += piece.token_ids
                if text.add(piece.token_ids).stopped_by is not None:
                    finish, stop_reason = "stop", text.stopped_by
                    break
                if piece.step_end:  # vLLM saw the step end (its detokenizer has context)
                    finish, stop_reason = "stop", stops[0]
                    break
        return GeneratedStep(token_ids, ctx.engine.decode(token_ids), finish, stop_reason)
