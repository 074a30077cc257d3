"""Seeds of the many engine calls one seeded sequence makes.

Why one home: a method that splits a sequence into many engine calls (a Quiet-STaR decoder's
per-token calls, the expansions of a REBASE tree) gives each call a seed of its own, drawn in
order from a stream that starts at the sequence's seed times `SEED_STRIDE`. The stride spreads
the streams of neighbouring seeds apart (seed s and s + 1 share no seed for the first
`SEED_STRIDE` calls), so a new request seed is a new sample, not the old one shifted by a
call. Changing the stride changes every seeded output, so both call sites must read it here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

# A prime well above the calls one sequence makes (a REBASE tree draws at most 64 x 64).
SEED_STRIDE = 1_000_003


def call_seeds(seed: int, offset: int = 0) -> Iterator[int]:
    """The seeds of a seeded sequence's engine calls, one per call in order: `seed *
    SEED_STRIDE + offset`, then one more each call. `offset` keeps several streams of one
    seed apart (the trees of one request)."""
    return itertools.count(seed * SEED_STRIDE + offset)
