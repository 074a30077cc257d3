"""`rebase`: REBASE tree search on the engine, guided by a process reward model.

The algorithm is `server.rebase.search.rebase_search`; this file supplies its two callbacks:
`expand` (sample k next steps of a node: one engine sequence each, through the cross-request
scheduler, children share the node's token prefix) and `score` (the PRM's reward of each new
node's last step), then votes over the leaves and reports tree statistics.

With the `priority` scheduler (docs/architecture.md, "The scheduler") each child is scored as
soon as its own step is generated (a CPU reward inline, a PRM engine under its own bound), so
only the allocation waits for the whole level; expansions carry a latency rank (vLLM's
`priority` too) and a KV-block cost. The trees are the same: seeds are drawn in submission
order, before any job runs, and a node's score depends on its path only.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel
from vllm.sampling_params import RequestOutputKind

from server.core import metrics
from server.core.answers import extract_answer
from server.core.budget import CallWatch, watched
from server.core.errors import APIError
from server.core.request_ids import engine_request_id
from server.core.requests import ChoiceDelta, MethodInput, RequestWork
from server.core.seeds import call_seeds
from server.engines.base import PolicyEngine
from server.methods.base import Method, MethodContext, record_budget
from server.methods.streams import merge_streams
from server.rebase.aggregation import aggregate, voting_leaves
from server.rebase.early_stop import EarlyStopMonitor
from server.rebase.kv import expansion_cost
from server.rebase.params import AdaptiveStop, RebaseParams, early_stop_label
from server.rebase.scheduler import KvCost, PriorityScheduler
from server.rebase.search import SearchResult, rebase_search
from server.rebase.steps import StepFormat
from server.rebase.tree import Node, root_node
from server.rewards.base import RewardModel


class Rebase(Method):
    name = "rebase"
    parameter_blocks: ClassVar[dict[str, type[BaseModel]]] = {"rebase": RebaseParams}

    def check(self, inp: MethodInput, engine: PolicyEngine) -> None:
        params: RebaseParams = inp.params["rebase"]  # type: ignore[assignment]
        if inp.sampling.min_tokens > params.max_step_tokens:
            raise APIError(
                f"min_tokens ({inp.sampling.min_tokens}) applies to each step of method "
                f"'{self.name}' and must be at most rebase.max_step_tokens "
                f"({params.max_step_tokens})",
                param="min_tokens",
            )
        if inp.sampling.logprobs is not None:
            raise APIError(f"logprobs is not supported by method '{self.name}'", param="logprobs")
        if inp.sampling.stop:
            raise APIError(
                f"stop is not supported by method '{self.name}'; steps end at "
                "rebase.step_delimiter",
                param="stop",
            )

    def default_max_tokens(self, params: dict[str, BaseModel], room: int) -> int | None:
        """A path may take every step the tree allows: `max_depth` x `max_step_tokens`,
        within the context the prompt leaves."""
        rebase: RebaseParams = params["rebase"]  # type: ignore[assignment]
        return min(room, rebase.max_depth * rebase.max_step_tokens)

    def work(self, inp: MethodInput) -> RequestWork:
        """`n` trees of up to `width` live nodes each (one engine sequence per node), every
        path up to `max_tokens` long."""
        params: RebaseParams = inp.params["rebase"]  # type: ignore[assignment]
        factors = (("n", inp.n), ("rebase.width", params.width))
        return RequestWork(factors, inp.sampling.max_tokens)

    def run(self, ctx: MethodContext, inp: MethodInput) -> AsyncIterator[ChoiceDelta]:
        return merge_streams([self._search(ctx, inp, i) for i in range(inp.n)])

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
        """One step: plain sampling up to a stop string (kept in the text) or `max_tokens`.
        Subclasses decode steps differently (quiet_star+rebase thinks). `choice_id` is the
        tree's: all its calls share one replica's prefix cache (docs/scaling.md). `priority`
        is vLLM's (lower runs first; it matters only with the engine's priority policy).
        `watch` (a budget) sees the call after every engine step (DELTA outputs), so it can
        cut a step within one token; without it, one output at the end."""
        params = inp.sampling.to_vllm(
            max_tokens=max_tokens,
            stop=stops,
            include_stop_str_in_output=True,
            seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY if watch is None else RequestOutputKind.DELTA,
            logprobs=None,
        )
        token_ids: list[int] = []
        text: list[str] = []
        out = None
        request_id = engine_request_id(ctx.prompt_id)
        call = ctx.engine.generate(
            prompt, params, ctx.meter, request_id=request_id, choice_id=choice_id,
            priority=priority,
        )  # fmt: skip
        outputs = watched(call, watch, len(prompt))
        async with aclosing(outputs):  # a cancelled step aborts (and charges) its call
            async for output in outputs:
                out = output.outputs[0]
                token_ids += out.token_ids
                text.append(out.text)
        return GeneratedStep(token_ids, "".join(text), out.finish_reason, out.stop_reason)

    async def _search(
        self, ctx: MethodContext, inp: MethodInput, index: int
    ) -> AsyncIterator[ChoiceDelta]:
        params: RebaseParams = inp.params["rebase"]  # type: ignore[assignment]
        tree = _SearchDriver(
            self, ctx, inp, params, choice_id=f"{ctx.prompt_id}-{index}", index=index
        )
        result = await rebase_search(tree.root, params, tree.expand, tree.score, tree.monitor)
        yield tree.answer(result)


# More seeds than one tree can draw (one per expansion: at most width x max_depth = 64 x 64):
# tree i of a request starts its seeds this far after tree i - 1, so trees never share one.
SEEDS_PER_TREE = 1 << 20


def tree_seeds(seed: int | None, index: int) -> Iterator[int]:
    """The seeds tree `index` of a request gives its expansions, one each, in order: the same
    tree for the same request seed, and (as with `n` baseline choices) a different tree per
    choice. Tree 0's stream does not depend on `n`."""
    return call_seeds(seed or 0, index * SEEDS_PER_TREE)


@dataclass
class GeneratedStep:
    token_ids: list[int]
    text: str
    finish_reason: str | None  # vLLM's: "stop" (EOS or a stop string) or "length"
    stop_reason: int | str | None  # the stop string that matched; None for EOS


class _SearchDriver:
    """Drives one search (server/rebase/search.py) on the engine: expansions, scoring, the
    final answer."""

    def __init__(
        self,
        method: Rebase,
        ctx: MethodContext,
        inp: MethodInput,
        params: RebaseParams,
        *,
        choice_id: str,
        index: int,
    ) -> None:
        # The tree's own meter (charging the request's too): what it spent, for early stopping,
        # shadow records and budgets.
        self.meter = ctx.meter.child()
        self.ctx = copy.copy(ctx)  # the request's context, with the tree's meter
        self.ctx.meter = self.meter
        self.method, self.inp, self.params = method, inp, params
        self.choice_id, self.index = choice_id, index
        self.format = StepFormat(params)
        prefix = self.format.root_prefix()
        self.root = root_node(ctx.engine.encode(prefix) if prefix else [], prefix)
        self.scheduler = ctx.resources.rebase_scheduler
        self.reward: RewardModel = reward_model(ctx, params.reward_model)
        self.monitor = EarlyStopMonitor(params, max_score=self.reward.max_score, spent=self.spent)
        # The request's budget for this tree (server/core/budget.py): a spent budget halts the
        # search, which answers from what it has.
        self.budget = ctx.choice_budget(inp, self.meter)
        if self.budget is not None:
            self.budget.on_spent = self._halt
        self._halted = asyncio.Event()
        self._deadline: asyncio.TimerHandle | None = None
        if self.budget is not None and (left := self.budget.seconds_left()) is not None:
            self._deadline = asyncio.get_running_loop().call_later(
                max(left, 0.0), self._out_of_time
            )
        self._seeds = tree_seeds(inp.sampling.seed, index)
        self.tree_tokens = 0
        self.reward_calls = 0
        # Score each child when its step is done: the `priority` scheduler's way, and what an
        # early stop needs to check after every leaf. Ranks by request age.
        self.eager = isinstance(self.scheduler, PriorityScheduler) or (
            params.early_stop != "off" or params.shadow_stop or inp.budget is not None
        )
        # An adaptive stop samples in windows (AdaptiveStop.window): at most this many of the
        # tree's expansions run at once, the rest wait in slot order, and a stop withdraws
        # them before they reach the engine.
        rule = params.early_stop
        self.window = (
            rule.window if isinstance(rule, AdaptiveStop) and not params.shadow_stop else None
        )
        self._window = asyncio.Semaphore(self.window) if self.window is not None else None
        self.best: Node | None = None  # the best-scored node so far (answer of a cut search)
        self.started = time.monotonic()
        self.prioritised = isinstance(self.scheduler, PriorityScheduler)
        self.kv_layout = ctx.engine.kv_layout() if self.prioritised else None

    # -- expand: k continuations of each node, one engine sequence each ------------------
    async def expand(self, requests: Sequence[tuple[Node, int]]) -> AsyncIterator[tuple[int, Node]]:
        """Yield (slot, child) as each child is done; closing this early (the search stopped)
        cancels the expansions still running, which aborts and charges their engine calls."""
        # Seeds are drawn here, in request order, before any job runs: the same tree
        # whatever order the engine finishes the steps in.
        jobs = [self._expand_one(node, next(self._seeds)) for node, k in requests for _ in range(k)]
        tasks = [asyncio.ensure_future(job) for job in jobs]
        slots = {task: slot for slot, task in enumerate(tasks)}
        pending = set(tasks)
        halted = asyncio.ensure_future(self._halted.wait())  # a budget ran out
        try:
            while pending and not self._halted.is_set():
                done, pending = await asyncio.wait(
                    pending | {halted}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(halted)
                for task in sorted(done - {halted}, key=slots.__getitem__):
                    yield slots[task], task.result()  # a failed expansion fails the search
        finally:
            halted.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, halted, return_exceptions=True)

    def _halt(self) -> None:
        """The budget ran out: stop the search at once (server/core/budget.py)."""
        self.monitor.halt("budget")
        self._halted.set()

    def _out_of_time(self) -> None:
        if self.budget is not None and self.budget.cut is None:
            self.budget.cut = "seconds"
        self._halt()

    def _step_watch(self) -> CallWatch | None:
        """What watches a running step: the budget, when it counts FLOPs or tokens (a spent
        budget halts the search: `on_spent`)."""
        budget = self.budget
        if budget is None or (budget.limit.flops is None and budget.limit.tokens is None):
            return None
        return budget

    async def _expand_one(self, node: Node, seed: int) -> Node:
        if self._window is None:
            return await self._expand_now(node, seed)
        async with self._window:  # FIFO: children start in slot order
            return await self._expand_now(node, seed)

    async def _expand_now(self, node: Node, seed: int) -> Node:
        child = await self._generate_step(node, seed)
        if self.eager:  # no level barrier before scoring (the reference scores per fork)
            await self._score_now([child])
        return child

    def _rank(self, depth: int) -> tuple[float, int]:
        """Older requests first, then deeper levels (closer to the tree's end)."""
        return (self.started, -depth)

    def _engine_priority(self) -> int:
        """vLLM's priority (lower first): the tree's start in ms, so older requests win the
        engine's queue and are the last it preempts."""
        return int(self.started * 1000) % 2**31

    async def _generate_step(self, node: Node, seed: int) -> Node:
        depth = node.depth + 1
        remaining = self.inp.sampling.max_tokens - node.path_tokens
        prompt = self.inp.prompt_token_ids + self.root.token_ids + node.path_token_ids()
        max_tokens = max(1, min(self.params.max_step_tokens, remaining))
        kv = None
        if self.kv_layout is not None:
            kv = expansion_cost(node, len(prompt), max_tokens, self.kv_layout[1])
        step = await self._run_step(prompt, depth, max_tokens, seed, self._step_watch(), kv)
        if self.budget is not None:
            self.budget.check()  # the step's final charge may spend it: `on_spent` halts
        self.tree_tokens += len(step.token_ids)
        path_tokens = node.path_tokens + len(step.token_ids)
        child = Node(
            token_ids=step.token_ids,
            text=step.text,
            step_text=self.format.step_text(step.text, depth),
            end=self.format.classify(
                text=step.text,
                finish_reason=step.finish_reason,
                stop_reason=step.stop_reason,
                path_tokens=path_tokens,
                max_path_tokens=self.inp.sampling.max_tokens,
            ),
            parent=node,
            depth=depth,
            path_tokens=path_tokens,
        )
        node.children.append(child)
        return child

    async def _run_step(
        self,
        prompt: list[int],
        depth: int,
        max_tokens: int,
        seed: int,
        watch: CallWatch | None,
        kv: KvCost | None,
    ) -> GeneratedStep:
        """One step through the scheduler."""
        return await self.scheduler.run(
            self.ctx.http_request_id,
            lambda: self.method.generate_step(
                self.ctx,
                self.inp,
                prompt,
                max_tokens=max_tokens,
                stops=self.format.stop_strings(depth),
                seed=seed if self.inp.sampling.seed is not None else None,
                choice_id=self.choice_id,
                priority=self._engine_priority() if self.prioritised else 0,
                watch=watch,
            ),
            self.method.name,
            rank=self._rank(depth),
            kv=kv,
        )

    # -- score: reward of each new node = PRM score of its last step -----------------------
    async def score(self, nodes: Sequence[Node]) -> None:
        """The search's level-wide scoring call (the nodes not scored eagerly)."""
        if nodes:
            await self._score_now(nodes)

    async def _score_now(self, nodes: Sequence[Node]) -> None:
        steps_batch = [node.steps() for node in nodes]

        async def job():
            return await self.reward.score(self.inp.prompt_text, steps_batch, meter=self.ctx.meter)

        if not self.eager:
            scores = await self.scheduler.run(self.ctx.http_request_id, job, self.method.name)
        elif self.reward.name == "arithmetic":  # microseconds on the CPU: no slot to wait for
            scores = await job()
        elif self.reward.name == "vllm_prm":  # its own engine: its own bound, not policy slots
            async with self.ctx.resources.prm_bound:
                scores = await job()
        else:  # the policy judge runs on the policy engine: it takes a policy slot
            scores = await self.scheduler.run(
                self.ctx.http_request_id, job, self.method.name, rank=self._rank(nodes[0].depth)
            )
        self.reward_calls += 1
        metrics.REWARD_CALLS.labels(self.method.name, self.reward.name).inc()
        for node, path_scores in zip(nodes, scores, strict=True):
            node.score = path_scores[-1] if path_scores else 0.0
            node.scored = True
            if self.best is None or node.score > self.best.score:
                self.best = node

    # -- answer: vote over the leaves -------------------------------------------------------
    def answer(self, result: SearchResult) -> ChoiceDelta:
        """The vote over the voting leaves; a search a budget cut before any leaf finished
        answers with its best-scored path so far. A budget cut is `finish_reason="length"`."""
        leaves = voting_leaves(result.leaves, self.params.vote_leaves)
        votes = aggregate(
            [(extract_answer(leaf.path_text()), leaf.score) for leaf in leaves],
            self.params.aggregation,
        )
        if self._deadline is not None:
            self._deadline.cancel()
        self._record(result, votes, voters=len(leaves))
        if self.budget is not None:
            record_budget(self.ctx, self.method.name, self.budget, self.choice_id)
        winner = leaves[votes.winner_index] if votes.winner_index is not None else self.best
        if winner is None:
            return ChoiceDelta(index=self.index, text="", finish_reason="length")
        finished = winner.end in ("answer", "eos") and result.ended != "budget"
        return ChoiceDelta(
            index=self.index,
            text=self.root.text + winner.path_text(),
            token_ids=self.root.token_ids + winner.path_token_ids(),
            finish_reason="stop" if finished else "length",
        )

    def spent(self) -> dict[str, float]:
        """What this tree has spent so far (engine calls charged once they end)."""
        return {
            "flops": self.meter.total_flops.executed,
            "tokens": self.meter.component("policy").generated_tokens,
        }

    def _saved_estimate(self, result: SearchResult, spent: dict[str, float]) -> dict | None:
        """An early stop's saving, estimated: the leaves it did not grow at the average cost
        of a leaf so far (shadow mode measures the real figure)."""
        done = self.params.width - result.remaining
        if result.ended not in ("decided", "confident") or done <= 0:
            return None
        return {kind: value * result.remaining / done for kind, value in spent.items()}

    def _record(self, result: SearchResult, votes: Any, *, voters: int) -> None:
        method = self.method.name
        metrics.REBASE_NODES.labels(method).observe(result.nodes_expanded)
        metrics.REBASE_DEPTH.labels(method).observe(result.depth)
        metrics.REBASE_LEAVES.labels(method).observe(len(result.leaves))
        metrics.TOKENS.labels(method, "tree").inc(self.tree_tokens)
        metrics.SEARCH_ENDS.labels(method, result.ended).inc()
        spent = self.spent()
        saved = self._saved_estimate(result, spent)
        for kind, value in (saved or {}).items():
            metrics.EARLY_STOP_SAVED.labels(method, result.ended, kind).inc(value)
        self.ctx.details.setdefault("rebase", []).append(
            {
                "request": self.choice_id,
                "answer": votes.answer,
                "votes": votes.votes,
                "ended": result.ended,
                "early_stop": early_stop_label(self.params.early_stop),
                "window": self.window,
                "remaining_leaves": result.remaining,
                "spent": spent,
                "saved_estimate": saved,
                "shadow": self.monitor.shadow,
                "nodes_expanded": result.nodes_expanded,
                "depth": result.depth,
                "level_sizes": result.level_sizes,
                "leaves": len(result.leaves),
                "voting_leaves": voters,
                "leaf_ends": _count(leaf.end for leaf in result.leaves),
                "tree_tokens": self.tree_tokens,
                "reward_model": self.reward.name,
                "reward_calls": self.reward_calls,
            }
        )


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def reward_model(ctx: MethodContext, name: str | None) -> RewardModel:
    """The shared reward model the request names (or the server default); a 400 naming
    `rebase.reward_model` when this gateway cannot serve it."""
    try:
        return ctx.resources.reward_model(name or ctx.settings.reward_model)
    except ValueError as exc:
        raise APIError(str(exc), param="rebase.reward_model") from None
