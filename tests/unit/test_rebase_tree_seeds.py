"""Seeds of a request's trees: reproducible per request seed, different per tree."""

from __future__ import annotations

from itertools import islice

from server.methods.rebase import tree_seeds

EXPANSIONS = 64 * 64  # the most one tree can draw (width x max_depth at their bounds)


def _draw(seed: int | None, index: int) -> list[int]:
    return list(islice(tree_seeds(seed, index), EXPANSIONS))


def test_a_trees_seeds_follow_from_the_request_seed_alone() -> None:
    """Reproducible per (request seed, tree), and a new request seed is a new tree: a stream
    that ignored the request seed, or drew from global state, fails here."""
    assert _draw(7, 3) == _draw(7, 3) and _draw(None, 2) == _draw(None, 2)
    assert not set(_draw(7, 0)) & set(_draw(8, 0))
    assert not set(_draw(7, 3)) & set(_draw(8, 3))


def test_trees_of_one_request_never_share_a_seed() -> None:
    drawn = [set(_draw(7, index)) for index in range(16)]
    assert sum(map(len, drawn)) == len(set().union(*drawn)) == 16 * EXPANSIONS


def test_tree_0_keeps_the_seeds_it_had_before_trees_were_told_apart() -> None:
    # Committed benchmark trees (n = 1) stay the same trees.
    assert _draw(5, 0)[:3] == [5_000_015, 5_000_016, 5_000_017]
