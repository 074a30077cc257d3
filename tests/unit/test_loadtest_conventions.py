"""The seed code's conventions: its answer extraction and the tokens its FLOPs charged."""

from __future__ import annotations

import pytest

from loadtest.conventions import seed_first_integer, seed_tokens

TRIGGER = "\nTherefore, the answer (arabic numerals) is"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Q: 3 apples\nA: 2 + 2 = 4" + TRIGGER + " 18.\n\n", "18"),
        ("work 7" + TRIGGER + " $1,250 dollars", "1"),  # no comma grouping, as the seed
        ("work" + TRIGGER + " 3.75", "3"),  # an integer, not a decimal
        ("work" + TRIGGER + "   \n  ", None),
        ("no trigger, 12 then 5", "12"),
        ("x" + TRIGGER + " 1" + TRIGGER + " 0042", "42"),  # after the last trigger
    ],
)
def test_seed_first_integer(text: str, expected: str | None) -> None:
    assert seed_first_integer(text) == expected


def test_plain_requests_are_charged_their_generated_tokens() -> None:
    usage = {"completion_tokens": 300, "thought_tokens": 900, "prompt_tokens": 80}
    assert seed_tokens(usage, {}, 96) == 300  # no prompt, no thoughts
    assert seed_tokens(None, None, 96) == 0


def test_trees_are_charged_max_step_tokens_per_step_of_every_path() -> None:
    # 3 nodes at depth 1, 3 at depth 2, 2 at depth 3: 96 * (3*1 + 3*2 + 2*3)
    details = {"rebase": [{"level_sizes": [3, 3, 2], "tree_tokens": 500}]}
    assert seed_tokens({"completion_tokens": 40}, details, 96) == 96 * 15
    two = {"rebase": [{"level_sizes": [2]}, {"level_sizes": [1, 1]}]}
    assert seed_tokens({}, two, 10) == 10 * 2 + 10 * 3
