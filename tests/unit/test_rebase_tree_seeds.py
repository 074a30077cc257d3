"""Seeds of a request's trees: reproducible per request seed, different per tree."""

from __future__ import annotations

from itertools import islice

from server.methods.rebase import tree_seeds

EXPANSIONS = 64 * 64  # the most one tree can draw (width x max_depth at their bounds)


def _draw(seed: int | None, index: int) -> list[int]:
    return list(islice(tree_seeds(seed, index), EXPANSIONS))


def test_the_same_request_seed_gives_each_tree_the_same_seeds() -> None:
    assert _draw(7, 0) == _draw(7, 0) and _draw(7, 3) == _draw(7, 3)


def test_trees_of_one_request_never_share_a_seed() -> None:
    drawn = [set(_draw(7, index)) for index in range(16)]
    assert sum(map(len, drawn)) == len(set().union(*drawn)) == 16 * EXPANSIONS


def test_tree_0_keeps_the_seeds_it_had_before_trees_were_told_apart() -> None:
    # Committed benchmark trees (n = 1) stay the same trees.
    assert _draw(5, 0)[:3] == [5_000_015, 5_000_016, 5_000_017]
