"""REBASE the way the paper's authors ran it: Hugging Face ``generate``, one node at a time.

The reference point for ``rebase_bench``: the same search (``server.rebase.search.rebase_search``
with the same ``allocate_children``, step format, leaf rules and vote), the same arithmetic PRM,
the same width / step / token settings, but every node is one ``model.generate`` call on the
full prompt + path (no batching across siblings or trees, no prefix cache across calls; the KV
cache lives only inside one call), and nodes are expanded and scored strictly one after another.
float32 on the CPU, ``torch.set_num_threads(2)``.

    python -m loadtest.benchmarks.hf_rebase --questions 4 --out /tmp/hf_rebase.json

(``rebase_bench hf`` runs it in alternating rounds against the gateway.)

Sampling follows vLLM's defaults for the gateway's requests (temperature as given, top-p 1, no
top-k, no repetition penalty); the random streams differ from vLLM's, so the trees are not
token-identical to the gateway's: compare seconds per question *and* per generated token.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loadtest.harness import cli
from loadtest.harness.data import Problem
from loadtest.harness.provenance import record_hf_side
from loadtest.harness.rebase_tree import TreeSettings
from loadtest.harness.results import write_result
from loadtest.harness.servers import EngineSettings
from server.core.answers import extract_answer
from server.rebase.aggregation import aggregate
from server.rebase.params import RebaseParams
from server.rebase.search import batch_expand, rebase_search
from server.rebase.steps import StepFormat
from server.rebase.tree import Node, root_node
from server.rewards.arithmetic import ArithmeticRewardModel


@dataclass
class HFTreeStats:
    """What one search did and took."""

    question: int
    seconds: float
    generate_calls: int
    generated_tokens: int
    prompt_tokens: int  # summed over calls: all of it is recomputed, nothing is cached
    nodes_expanded: int
    depth: int
    leaves: int
    answer: str | None


class HFRebase:
    """One model, one tokenizer; ``solve`` runs one REBASE search sequentially."""

    def __init__(self, model_path: str, settings: TreeSettings, threads: int = 2) -> None:
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        record_hf_side(self.model, torch.get_num_threads())
        self.settings = settings
        self.params = RebaseParams(
            width=settings.width,
            balance_temperature=settings.balance_temperature,
            max_depth=settings.max_depth,
            max_step_tokens=settings.max_step_tokens,
            step_delimiter=settings.step_delimiter,
        )
        self.format = StepFormat(self.params)
        self.prm = ArithmeticRewardModel()
        self.eos = self.tokenizer.eos_token_id

    def solve(self, q: Problem, prompt: str) -> HFTreeStats:
        torch.manual_seed(self.settings.seed_for(q.index))
        prompt_ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        counters = {"calls": 0, "generated": 0, "prompt": 0}

        async def expand(requests: Sequence[tuple[Node, int]]) -> list[Node]:
            children = []
            for node, k in requests:
                for _ in range(k):  # one node at a time: no batching of siblings
                    children.append(self._generate_step(prompt_ids, node, counters))
            return children

        async def score(nodes: Sequence[Node]) -> None:
            for node in nodes:  # one node at a time
                scores = await self.prm.score(prompt, [node.steps()])
                node.score = scores[0][-1] if scores[0] else 0.0

        start = time.perf_counter()
        search = rebase_search(root_node([], ""), self.params, batch_expand(expand), score)
        result = asyncio.run(search)
        votes = aggregate(
            [(extract_answer(leaf.path_text()), leaf.score) for leaf in result.leaves],
            "weighted_vote",
        )
        return HFTreeStats(
            question=q.index,
            seconds=time.perf_counter() - start,
            generate_calls=counters["calls"],
            generated_tokens=counters["generated"],
            prompt_tokens=counters["prompt"],
            nodes_expanded=result.nodes_expanded,
            depth=result.depth,
            leaves=len(result.leaves),
            answer=votes.answer,
        )

    @torch.inference_mode()
    def _generate_step(self, prompt_ids: list[int], node: Node, counters: dict) -> Node:
        depth = node.depth + 1
        remaining = self.settings.max_tokens - node.path_tokens
        input_ids = torch.tensor([prompt_ids + node.path_token_ids()])
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=self.settings.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max(1, min(self.settings.max_step_tokens, remaining)),
            stop_strings=self.format.stop_strings(depth),
            tokenizer=self.tokenizer,
            pad_token_id=self.eos,
            eos_token_id=self.eos,
        )
        new = out[0, input_ids.shape[1] :].tolist()
        counters["calls"] += 1
        counters["generated"] += len(new)
        counters["prompt"] += input_ids.shape[1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish_reason, stop_reason = self._finish(new, text, depth)
        token_ids = [t for t in new if t != self.eos]
        path_tokens = node.path_tokens + len(new)
        child = Node(
            token_ids=token_ids,
            text=text,
            step_text=self.format.step_text(text, depth),
            end=self.format.classify(
                text=text,
                finish_reason=finish_reason,
                stop_reason=stop_reason,
                path_tokens=path_tokens,
                max_path_tokens=self.settings.max_tokens,
            ),
            parent=node,
            depth=depth,
            path_tokens=path_tokens,
        )
        node.children.append(child)
        return child

    def _finish(self, new: list[int], text: str, depth: int) -> tuple[str, int | str | None]:
        """vLLM's (finish_reason, stop_reason) for the same ending, as StepFormat expects."""
        if new and new[-1] == self.eos:
            return "stop", None
        for stop in self.format.stop_strings(depth):
            if text.endswith(stop):
                return "stop", stop
        return "length", None


def run(
    model_path: str, questions: Sequence[tuple[Problem, str]], settings: TreeSettings
) -> list[HFTreeStats]:
    solver = HFRebase(model_path, settings)
    stats = []
    for q, prompt in questions:
        s = solver.solve(q, prompt)
        print(f"hf q{q.index}: {s.seconds:.1f}s, {s.generated_tokens} generated", flush=True)
        stats.append(s)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--data", default=None)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = TreeSettings(width=args.width, temperature=args.temperature, seed=args.seed)
    model = EngineSettings(model=args.model).model_path()
    stats = run(model, cli.questions(args, args.questions), settings)
    write_result(
        args.out, "hf_rebase", {"settings": asdict(settings), "trees": [asdict(s) for s in stats]}
    )


if __name__ == "__main__":
    main()
