"""A reward model that asks the served policy itself: "Is the last step correct? Yes or No."

Why: on a CPU box there is no room for a second, 7B reward model, and the policy engine is already
running. One extra engine request per path (the prompt, one generated token) turns the policy into
a generative judge: score = P(Yes) / (P(Yes) + P(No)) for the token right after "Answer:".

What it is worth, honestly: a judge is only as good as the model judging. SmolLM2-135M's Yes/No is
weak, close to a coin flip with a bias towards one answer; a 7B instruct model gives a usable
signal; neither is a trained PRM. Publish which reward a number was measured with.

Semantics (and why):
* Only the LAST step of each path is judged: REBASE rewards a node with its last step's score, and
  judging every prefix would multiply the cost by the path length. Earlier steps get the score this
  judge gave that prefix before (REBASE scored the parent path one depth earlier, so it is usually
  in the cache) and the neutral 0.5 otherwise.
* P(Yes) sums the probability of every single-token spelling of the answer (" Yes", "Yes",
  " yes", ...; likewise for No), whose ids are looked up once in the tokenizer. A spelling that
  takes several tokens is left out: its first token ("Y") is not evidence of the word.
* By default the engine returns the log-probabilities of exactly those ids
  (``SamplingParams.logprob_token_ids``, vLLM >= 0.32), so nothing is lost to a top-k cut. With
  ``exact=False`` it asks for the top ``max_logprobs`` tokens instead (the engine's cap, 20 by
  default) and spellings outside the top-k count 0. Neither in the top-k, or no usable spelling in
  the vocabulary: 0.5.
* Logprobs are the model's raw distribution (vLLM's default ``raw_logprobs``): temperature does
  not touch them, so the request is greedy (temperature 0) and the generated token is ignored.
* All paths of a batch go to the engine at once, so vLLM batches them; scores are cached per
  (question, steps) in a bounded LRU, because siblings and re-scored parents repeat.
* The judge's calls are charged to the request's meter as component "reward" (they run on the
  policy engine, so their FLOPs are the policy model's).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from server.rewards.base import RewardModel

if TYPE_CHECKING:
    from server.core.usage import UsageMeter
    from server.engines.base import PolicyEngine as Engine

__all__ = [
    "NO_SPELLINGS",
    "YES_SPELLINGS",
    "LruCache",
    "PolicyJudgeRewardModel",
    "build_judge_prompt",
    "single_token_ids",
    "yes_probability",
]

logger = logging.getLogger(__name__)

YES_SPELLINGS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_SPELLINGS = ("No", " No", "no", " no", "NO", " NO")
JUDGE_INSTRUCTION = "Is the last step correct? Answer Yes or No.\nAnswer:"
NEUTRAL = 0.5

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A small bounded mapping that forgets the least recently used entry first."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def build_judge_prompt(question: str, steps: Sequence[str]) -> str:
    """The judge's prompt: the question, the steps so far (numbered), the Yes/No question.

    ``steps`` may be a suffix with elided earlier steps (see ``_prompt_ids``); an empty string
    step is rendered as "..." so the numbering still says where the last step sits.
    """
    lines = [f"Question: {question.strip()}", "Solution so far:"]
    lines += [f"Step {k}: {s.strip() or '...'}" for k, s in enumerate(steps, start=1)]
    lines.append(JUDGE_INSTRUCTION)
    return "\n".join(lines)


def single_token_ids(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """Ids of the spellings that the tokenizer encodes as exactly one token (deduplicated)."""
    ids: list[int] = []
    for spelling in spellings:
        encoded = list(tokenizer.encode(spelling, add_special_tokens=False))
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def yes_probability(
    logprobs: Mapping[int, Any], yes_ids: Sequence[int], no_ids: Sequence[int]
) -> float:
    """P(Yes) / (P(Yes) + P(No)) from one position's ``{token_id: Logprob | float}``.

    Ids missing from ``logprobs`` (outside the top-k) contribute 0; neither side present: 0.5.
    """

    def mass(ids: Sequence[int]) -> float:
        total = 0.0
        for token_id in ids:
            entry = logprobs.get(token_id)
            if entry is None:
                continue
            lp = float(getattr(entry, "logprob", entry))
            if math.isfinite(lp):
                total += math.exp(lp)
        return total

    p_yes, p_no = mass(yes_ids), mass(no_ids)
    if not p_yes + p_no > 0.0:
        return NEUTRAL
    return min(1.0, max(0.0, p_yes / (p_yes + p_no)))


class PolicyJudgeRewardModel(RewardModel):
    """The served policy model judges each path's last step (see the module docstring)."""

    name = "policy_judge"

    def __init__(self, engine: Engine, *, cache_size: int = 4096, exact: bool = True) -> None:
        self.engine = engine
        self.exact = exact
        self.cache: LruCache[tuple[str, tuple[str, ...]], float] = LruCache(cache_size)
        self._label_ids: tuple[list[int], list[int]] | None = None

    @property
    def label_ids(self) -> tuple[list[int], list[int]]:
        """(yes ids, no ids), looked up in the engine's tokenizer on first use."""
        if self._label_ids is None:
            tokenizer = self.engine.tokenizer
            yes, no = (
                single_token_ids(tokenizer, YES_SPELLINGS),
                single_token_ids(tokenizer, NO_SPELLINGS),
            )
            if not yes or not no:
                logger.warning(
                    "policy_judge: the tokenizer has no single-token Yes/No spelling; "
                    "every step will score %.1f",
                    NEUTRAL,
                )
            self._label_ids = (yes, no)
        return self._label_ids

    def sampling_params(self) -> Any:
        """One greedy token with the logprobs of the Yes/No ids (or the engine's top-k)."""
        from vllm import SamplingParams

        yes, no = self.label_ids
        if self.exact:
            return SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[*yes, *no])
        return SamplingParams(max_tokens=1, temperature=0.0, logprobs=self._max_logprobs())

    def _max_logprobs(self) -> int:
        cap = int(self.engine.max_logprobs)
        return cap if cap != 0 else 1

    async def score(
        self,
        question: str,
        steps_batch: Sequence[Sequence[str]],
        *,
        meter: UsageMeter | None = None,
    ) -> list[list[float]]:
        """Judge every path's last step in one concurrent wave; earlier steps from the cache."""
        if meter is None:  # Engine.generate always charges a meter; a throwaway one then.
            from server.core.usage import UsageMeter

            meter = UsageMeter(policy_flops=self.engine.flops)
        keys = [(question, tuple(steps)) for steps in steps_batch]
        todo = list(dict.fromkeys(k for k in keys if k[1] and self.cache.get(k) is None))
        yes, no = self.label_ids
        if todo and yes and no:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._judge(q, s, meter)) for q, s in todo]
            for key, task in zip(todo, tasks, strict=True):
                self.cache.put(key, task.result())
        out = []
        for q, steps in keys:
            scores = []
            for i in range(len(steps)):
                cached = self.cache.get((q, steps[: i + 1]))
                scores.append(NEUTRAL if cached is None else cached)
            out.append(scores)
        return out

    async def _judge(self, question: str, steps: tuple[str, ...], meter: UsageMeter) -> float:
        final = None
        call = self.engine.generate(
            self._prompt_ids(question, steps), self.sampling_params(), meter, component="reward"
        )
        async with aclosing(call) as outputs:
            async for output in outputs:
                final = output
        if final is None or not final.outputs or not final.outputs[0].logprobs:
            return NEUTRAL
        yes, no = self.label_ids
        return yes_probability(final.outputs[0].logprobs[0], yes, no)

    def _prompt_ids(self, question: str, steps: Sequence[str]) -> list[int]:
        """The judge prompt's ids, shortened to fit the engine: first the earlier steps are elided,
        then the oldest tokens are dropped (the last step and the instruction always stay)."""
        limit = max(1, self.engine.max_model_len - 1)  # room for the one generated token
        ids = self.engine.encode(build_judge_prompt(question, steps))
        if len(ids) > limit and len(steps) > 1:
            elided = [""] * (len(steps) - 1) + [steps[-1]]
            ids = self.engine.encode(build_judge_prompt(question, elided))
        return ids[-limit:]
