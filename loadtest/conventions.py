"""The paper's conventions, exactly as its seed code applied them, next to ours.

Why a module of its own: a side-by-side table is only fair when both sides are counted alike.
Our FLOPs are counted per computed token (``usage.flops``: prompts, attention, thoughts, the
PRM; ``nominal`` as if nothing were cached). The seed code instead charged a constant per
*generated* token (7.65 GFLOPs for Mistral-7B; true 2N is about 14), nothing for prompts,
attention, thoughts or the PRM, and for REBASE ``max_step_tokens`` (96) per step for every node
of the tree *plus every ancestor again* (a node at depth d costs d steps). :func:`seed_tokens`
counts tokens that way; the report multiplies by the constant (``--paper-gflops-per-token``).

Answer extraction as the seed did it: the text after the answer trigger, trailing whitespace
stripped, the first integer in it (no decimals, no sign, no comma grouping).
"""

from __future__ import annotations

import re
from typing import Any

PAPER_GFLOPS_PER_TOKEN = 7.65  # the seed's constant for Mistral-7B
SEED_STOP = ["Q:", "\n\n\n"]  # the seed's stop strings: a second "Q:" (the prompt has one)
ANSWER_TRIGGER = "therefore, the answer (arabic numerals) is"
DEFAULT_MAX_STEP_TOKENS = 256  # the server's default for a REBASE step (server/rebase/params.py)


def seed_first_integer(text: str) -> str | None:
    """The seed's extraction: after the last answer trigger (or the whole text), trailing
    whitespace stripped, the first run of digits."""
    at = text.lower().rfind(ANSWER_TRIGGER)
    tail = text[at + len(ANSWER_TRIGGER) :] if at >= 0 else text
    m = re.search(r"\d+", tail.rstrip())
    return str(int(m.group(0))) if m else None


def seed_tokens(
    usage: dict[str, Any] | None, details: dict[str, Any] | None, max_step_tokens: int
) -> int:
    """Tokens one request costs in the seed's convention.

    A tree search (``method_details.rebase``): ``max_step_tokens`` per step of every node's path,
    i.e. ``max_step_tokens * sum_d d * nodes_at_depth_d``. Anything else: its visible generated
    tokens (``completion_tokens``; thoughts are not charged)."""
    trees = (details or {}).get("rebase") or []
    if trees:
        return sum(
            max_step_tokens * sum(d * n for d, n in enumerate(t.get("level_sizes") or [], 1))
            for t in trees
        )
    return int((usage or {}).get("completion_tokens") or 0)
