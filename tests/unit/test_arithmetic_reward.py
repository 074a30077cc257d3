"""The arithmetic-checking process reward: verdicts, safety against hostile text, the interface."""

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rewards.arithmetic import ArithmeticRewardModel, check_step, safe_eval, score_step
from server.rewards.base import RewardModel, check_scores


@pytest.mark.parametrize(
    "step",
    [
        "3 + 4 * 2 = 11",
        "She has 3 + 4 = 7 apples.",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
        "<<48+24=72>>",
        "He pays $1,200 x 5% = $60 in tax.",
        "2 × 3 ÷ 6 = 1",
        "7 − 2 = 5",
        "12 / 5 = 2.4",
        "10 / 3 = 3.33",  # money rounding
        "2 / 3 = 0.666",  # truncation to the shown decimals
        "5 * 3 = 15 + 2 = 17",  # running chain
        "x = 3 + 4 = 7",
        "(2 + 3) * 4 = 20",
        "Chloe sold 50/ 1/2 = 100 half dozens",  # tight fractions bind first
        "8 people eat 1 1/2 rolls each, 8 x 1 1/2 = 12 dinner rolls eaten.",
        "4 / 3 = 1 and 1/3",
        "The profit is $80 000 x 20/100 = $16 000.",
        "So, every 1% is equal to $7500/75% = $100.",
        "2^10 = 1024",
        "0.2 * 100 = 20%",
        "**Step 1:** 3 + 4 = 7",
        "- 3 + 4 = 7 apples",  # list bullet, not a minus
        "Total: 1,000 + 2,500 = 3,500",
        "-5 + 3 = -2",
    ],
)
def test_correct_arithmetic_scores_high(step: str) -> None:
    checks = check_step(step)
    assert checks and all(c.correct for c in checks), checks
    assert score_step(step) >= 0.9


@pytest.mark.parametrize(
    "step",
    [
        "3 + 4 * 2 = 14",
        "She has 3 + 4 = 8 apples.",
        "<<48/2=26>>",
        "He pays $1,200 x 5% = $65.",
        "10 / 3 = 3",
        "12 * 4 = 46",
        "Then 2 + 2 = 5.",
    ],
)
def test_wrong_arithmetic_scores_low(step: str) -> None:
    assert score_step(step) <= 0.1


def test_mixed_step_is_in_between_and_evidence_accumulates() -> None:
    assert score_step("2 + 2 = 4 and 3 + 3 = 7") == pytest.approx(0.5)
    one, two = score_step("2 + 2 = 4"), score_step("2 + 2 = 4 and 3 + 3 = 6")
    assert 0.85 <= one < two <= 0.95


def test_annotation_and_visible_text_count_once() -> None:
    assert len(check_step("He sold 48/2 = <<48/2=24>>24 clips.")) == 1


@pytest.mark.parametrize(
    "step",
    [
        "no arithmetic here",
        "First, find how many clips she sold in May.",
        "x = 5",
        "2x + 3 = 7",  # algebra fragment: we cannot read the left side, so we do not judge it
        "a + 3 * 2 = 7",
        "3 + 4 >= 7",
        "12 = 3 * 4",  # reversed: skipped, the bare number may be the tail of a phrase
        "26=5+3x",
        "150 =10+4c",
        "On Monday there were 3*30 = 30 + M trees.",
        "A third of 30 + 5 = 15 apples",
        "He has 60 students x 2/3 = 40 students",
        "The sun sets at 6:00+48=6:48 PM",
        "",
    ],
)
def test_nothing_checkable_is_neutral(step: str) -> None:
    assert score_step(step) == 0.5
    assert score_step(step, neutral=0.3) == 0.3


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd')",
        "9**9**9",
        "2**1000",
        "10**16",
        "99999999999999999999 * 2",
        "1e308 * 10",
        "1/0",
        "5 % 0",
        "0 ** -1",
        "(-8) ** 0.5",
        "[1, 2]",
        "lambda: 1",
        "True + 1",
        "'a' * 3",
        "1j + 1",
        "x + 1",
        "(" * 300 + "1" + ")" * 300,
        "1+" * 150 + "1",
        "",
        "1 if 1 else 2",
    ],
)
def test_safe_eval_rejects_without_raising(expr: str) -> None:
    start = time.perf_counter()
    assert safe_eval(expr) is None
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("3 + 4 * 2", 11.0),
        ("7 // 2", 3.0),
        ("7 % 4", 3.0),
        ("2 ** 10", 1024.0),
        ("-(3 - 5)", 2.0),
        ("-" * 190 + "1", 1.0),
    ],
)
def test_safe_eval_computes(expr: str, value: float) -> None:
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "step",
    [
        "__import__('os') = 1",
        "9**9**9 = 1",
        "9^9^9 = 1",
        "99999999999999999999 * 2 = 1",
        "<<__import__('os').system('ls')=0>>",
        "1 = " * 50_000,
        "(" * 100_000 + "1 + 1 = 2",
        "1+" * 100_000 + "1 = 2",
        "9" * 100_000 + " = 1",
        "<<" + "1+" * 1000 + "1=2>>",
        "1 " * 10_000 + "+ 1 = 2",
        "= = = = =",
    ],
)
def test_hostile_steps_are_handled_quickly(step: str) -> None:
    start = time.perf_counter()
    assert 0.0 <= score_step(step) <= 1.0
    assert time.perf_counter() - start < 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/^().,=%$ x<>abc\n")), max_size=300))
def test_fuzzed_arithmetic_text_never_raises(step: str) -> None:
    assert 0.0 <= score_step(step) <= 1.0


def test_reward_model_interface() -> None:
    with pytest.raises(TypeError):
        RewardModel()  # type: ignore[abstract]
    assert issubclass(ArithmeticRewardModel, RewardModel)
    assert ArithmeticRewardModel.name == "arithmetic"
    with pytest.raises(ValueError):
        ArithmeticRewardModel(neutral=1.5)


async def test_arithmetic_model_scores_batches_in_shape() -> None:
    model = ArithmeticRewardModel()
    batch = [
        ["Natalia sold 48/2 = 24 clips.", "48 + 24 = 72", "The answer is 72."],
        ["48/2 = 25", "Then she sold more."],
        [],
    ] + [["1 + 1 = 2"]] * 100
    scores = await model.score("How many clips?", batch)
    check_scores(batch, scores)
    assert scores[0] == [pytest.approx(0.9), pytest.approx(0.9), 0.5]
    assert scores[1] == [pytest.approx(0.1), 0.5]
    assert scores[2] == []


def test_check_scores_rejects_broken_shapes() -> None:
    with pytest.raises(ValueError):
        check_scores([["a"]], [])
    with pytest.raises(ValueError):
        check_scores([["a", "b"]], [[0.5]])
    with pytest.raises(ValueError):
        check_scores([["a"]], [[1.5]])


# The first 400 problems of the GSM8K test split, shipped with the tests (tests/fixtures/README.md).
GSM8K_TEST = Path(__file__).resolve().parent.parent / "fixtures" / "gsm8k_test_400.jsonl"


def _gsm8k_rows() -> list[dict]:
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()]
    assert len(rows) == 400
    return rows


def test_gsm8k_reference_solutions_are_almost_never_flagged() -> None:
    """False alarms on real solutions: the few flagged on the whole split (3 of its ~4,500
    checked equations) are genuine slips in the references; none is in these 400 problems."""
    checked = flagged = 0
    for row in _gsm8k_rows():
        for line in row["answer"].split("\n")[:-1]:
            checks = check_step(line)
            checked += len(checks)
            flagged += sum(not c.correct for c in checks)
    assert checked > 1200
    assert flagged / checked < 0.005


def test_gsm8k_injected_errors_are_mostly_caught() -> None:
    altered = caught = 0
    for row in _gsm8k_rows():
        for line in row["answer"].split("\n")[:-1]:
            prose = re.sub(r"<<[^<>]*>>", "", line)
            if (m := re.search(r"=\s*\$?(\d+)", prose)) is None:
                continue
            wrong = prose[: m.start(1)] + str(int(m.group(1)) + 1) + prose[m.end(1) :]
            altered += 1
            caught += any(not c.correct for c in check_step(wrong))
    assert caught / altered > 0.7
