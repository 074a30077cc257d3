"""Alternating rounds: A B, B A, A B, ... so drift in background load hits every side alike.

Why >= 3 rounds by default: with two rounds a single disturbed session decides the median;
three give a median that one outlier cannot move, and the min-max spread shows the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
DEFAULT_ROUNDS = 3


def schedule(sides: Sequence[str], rounds: int = DEFAULT_ROUNDS) -> list[tuple[int, str]]:
    """(round, side) pairs: the sides in order in odd rounds, reversed in even ones (A B B A)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    out = []
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        out += [(r + 1, side) for side in order]
    return out


def run_rounds(
    sides: Sequence[str],
    measure: Callable[[int, str], T],
    rounds: int = DEFAULT_ROUNDS,
    on_session: Callable[[list[T]], None] | None = None,
) -> list[T]:
    """``measure(round, side)`` for every pair of :func:`schedule`; ``on_session`` sees the
    sessions so far after each one (to write a partial result file)."""
    sessions: list[T] = []
    for r, side in schedule(sides, rounds):
        print(f"[round {r}] {side}", flush=True)
        sessions.append(measure(r, side))
        if on_session is not None:
            on_session(sessions)
    return sessions
