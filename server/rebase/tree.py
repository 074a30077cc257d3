"""Tree nodes of a REBASE search: one node = one reasoning step, linked to its parent.

Each node keeps its exact generated token ids, so a child's prompt is the parent's prompt plus
those ids: siblings and descendants share token-identical prefixes and hit vLLM's prefix cache
(re-tokenizing text could shift a token boundary and lose the hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Why a node stops growing: a normal step boundary, or a reason that makes it a leaf.
StepEnd = Literal["step", "answer", "eos", "length", "depth"]


@dataclass(eq=False)
class Node:
    token_ids: list[int]
    text: str  # as generated, including the step delimiter / next header
    step_text: str  # the step alone, as the reward model sees it
    end: StepEnd
    parent: Node | None = None
    depth: int = 0
    path_tokens: int = 0  # generated tokens from the root to here, inclusive
    score: float = 0.0
    scored: bool = False  # `score` is set (the driver may score a child as soon as it is done)
    children: list[Node] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.end != "step"

    def path(self) -> list[Node]:
        """Nodes from the first step to this one (the root prompt is not a node)."""
        nodes: list[Node] = []
        node: Node | None = self
        while node is not None and node.depth > 0:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def path_token_ids(self) -> list[int]:
        return [t for n in self.path() for t in n.token_ids]

    def path_text(self) -> str:
        return "".join(n.text for n in self.path())

    def steps(self) -> list[str]:
        return [n.step_text for n in self.path()]


def root_node(prefix_token_ids: list[int], prefix_text: str) -> Node:
    """The root holds what is forced before the first step (e.g. a 'Step 1:' header)."""
    return Node(token_ids=prefix_token_ids, text=prefix_text, step_text="", end="step")
