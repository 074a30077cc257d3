"""A CPU-only process reward: does the arithmetic a step writes check out?

What it is worth, honestly: it only detects *wrong arithmetic* — "12 * 4 = 46", "<<48/2=26>>". It
cannot tell a correct calculation of the wrong quantity from the right one, a wrong plan, a misread
question, or a step with no equation at all (those get a neutral prior). On GSM8K-style word
problems, where small policy models often slip on the arithmetic, that is a real but partial signal;
it is no substitute for a trained PRM (Math-Shepherd, Qwen2.5-Math-PRM) and the comparisons we
publish must say which reward was used. Measured on GSM8K's reference solutions (annotations
included): 0.06% of 4,701 checked equations in test (0.13% in train) are flagged wrong, and
reading them, most are real slips in the references ("8*3 = 240"); after bumping the first
``= N`` of each test step to ``N+1`` (annotations removed), 77% of the altered steps are caught.

What it checks:
* GSM8K calculator annotations ``<<48/2=24>>``;
* inline equations and chains in prose: ``3 + 4 * 2 = 11``, ``$1,200 x 5% = $60``, ``12 / 5 = 2.4``,
  running chains ``5 * 3 = 15 + 2 = 17`` (each "=" is checked against the whole right side or, for a
  running chain, its leading number). ``x``/``×``/``·`` multiply, ``÷`` divides, ``^`` is a power,
  ``$`` and thousands separators ("1,200", "80 000") are dropped, mixed numbers "1 1/2" and
  tight fractions bind first ("25 / 1/3" is 25 / (1/3)). "%" is loose in prose, so both
  readings (N/100 and N) are accepted on either side ("0.2 * 100 = 20%", "$7500/75% = $100").
* Skipped rather than judged (neutral): equations whose edges we cannot read — algebra
  ("2x + 3 = 7", "26 = 5 + 3x"), tails of expressions ("half of 30 + 5 = 20"), right sides that
  continue into words ("3*30 = 30 + M"), and reversed "12 = 3 * 4" (the bare number may be the
  tail of a phrase).
* Left sides are evaluated by :func:`safe_eval`: ``ast.parse(mode="eval")`` and a walk that admits
  only numbers and ``+ - * / // % **`` with bounded size, magnitude and exponent. Never ``eval``.

Tolerance (models round money): relative 1e-4; or, when the result is written with d >= 1 decimals,
within 10^-d (rounded or truncated to what is shown); or within 0.005 for an integer result.

Score of a step with ``c`` correct out of ``k`` checked equations: a smoothed fraction
``(c + 0.5 * w) / (k + w)`` with ``w = 0.25``, clipped to [0.05, 0.95]: one correct equation gives
0.9, one wrong 0.1, more evidence moves further out. A step with nothing checkable gets ``neutral``.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.rewards.base import RewardModel

if TYPE_CHECKING:
    from server.core.usage import UsageMeter

__all__ = ["ArithmeticRewardModel", "EquationCheck", "check_step", "safe_eval", "score_step"]

MAX_EXPR_CHARS = 200
MAX_ABS = 1e15
MAX_EXPONENT = 10
MAX_CHECKS_PER_STEP = 32
MAX_PAIRS_PER_STEP = 128  # "=" signs looked at per step: bounds the work on degenerate text
MAX_STEP_CHARS = 20_000
_CACHED_STEP_CHARS = 4_096
_PRIOR_WEIGHT = 0.25
_FLOOR, _CEILING = 0.05, 0.95

_BINOPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _Rejected(Exception):
    """The expression uses something the safe evaluator does not admit."""


def _bounded(value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Rejected
    if isinstance(value, int) and abs(value) > MAX_ABS:  # before float(): 10**400 would overflow
        raise _Rejected
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_ABS:
        raise _Rejected
    return value


def _eval(node: ast.expr) -> float:
    if isinstance(node, ast.Constant):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (right != int(right) or abs(right) > MAX_EXPONENT):
            raise _Rejected  # checked before computing: 9**9**9 never runs
        return _bounded(_BINOPS[type(node.op)](left, right))
    raise _Rejected


def _parse(expr: str) -> ast.expr | None:
    if len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        return ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def safe_eval(expr: str) -> float | None:
    """Value of an arithmetic expression, or None if it is not one we admit (or divides by zero).

    Admits number literals, unary +/-, and + - * / // % ** (integral exponent, |exponent| <= 10);
    every literal and intermediate result must stay within 1e15; at most 200 characters.
    """
    node = _parse(expr)
    return _value(node) if node is not None else None


def _value(node: ast.expr) -> float | None:
    try:
        return _eval(node)
    except (_Rejected, ArithmeticError, TypeError, RecursionError):
        return None


# --- finding equations in prose ------------------------------------------------------------------

_ANNOTATION_RE = re.compile(r"<<([^<>]{1,400})>>")
_PROSE_SUBS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[×⋅·∗]"), "*"),
    (re.compile(r"÷"), "/"),
    (re.compile(r"[−–]"), "-"),
    (re.compile(r"\$\s*"), ""),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # thousands separators: "1,200"
    (re.compile(r"(?<![\d.])(\d{1,3}) (?=\d{3}(?!\d|\.\d))"), r"\1"),  # and "80 000"
    (re.compile(r"\.(?!\d)"), "\n"),  # a full stop ends the arithmetic; decimals keep a digit after
    (re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])"), " * "),
    (re.compile(r"\^"), "**"),
    (re.compile(r"\b(\d+)[ \t]+(?:and[ \t]+)?(\d{1,2})/(\d{1,2})\b"), r"(\1+\2/\3)"),  # "1 1/2"
    # A fraction written tight binds tighter than spaced operators: "25 / 1/3" is 25 / (1/3).
    (re.compile(r"(?<![\d./])(\d+(?:\.\d+)?/\d+(?:\.\d+)?)(?![\d./%])"), r"(\1)"),
]
# A run of arithmetic characters; it starts at a number or "(" (a "-" only when glued to a number,
# so a "- " list bullet is not a minus sign) and never crosses a line.
_RUN_RE = re.compile(r"(?:-(?=[\d.(]))?[\d.(][\d.+\-*/()%= \t]*")
# A run whose left edge continues an expression we cannot read has its first equation skipped
# rather than judged: glued to a word or number ("2x + 3", "16,0000/10"), after "<operand> <op>",
# an operator word ("students x 2/3", "3 times 4 + 2") or "<fraction> of" ("half of 30 + 5").
_FRAGMENT_BEFORE_RE = re.compile(
    r"(?:[\w,:]|[\w)]\s*(?:\*\*|[-+*/^])\s*"
    r"|\b(?:x|X|times|plus|minus|by|over|[\d%]\s*of"
    r"|(?:half|thirds?|quarters?|fourths?|fifths?) of)\s+)$"
)
# A run whose right edge is glued to a word ("= 5 + 3x", "= 1.2Y") has its last equation skipped.
_GLUED_AFTER_RE = re.compile(r"\d[A-Za-z_:]")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class EquationCheck:
    """One checked equation: the computed side, what the step claims, and the verdict."""

    lhs: str
    rhs: str
    value: float
    correct: bool


def _normalise(text: str) -> str:
    for pattern, replacement in _PROSE_SUBS:
        text = pattern.sub(replacement, text)
    return text


def _parse_side(expr: str, *, keep_end: bool) -> tuple[str, ast.expr] | None:
    """Longest whitespace-token suffix (``keep_end``) or prefix of ``expr`` that parses."""
    expr = expr.strip()
    if keep_end:
        expr = expr[-MAX_EXPR_CHARS:]
        while expr.startswith("(") and expr.count("(") > expr.count(")"):
            expr = expr[1:].lstrip()
    else:
        expr = expr[:MAX_EXPR_CHARS]
        while expr.endswith(")") and expr.count(")") > expr.count("("):
            expr = expr[:-1].rstrip()
    tokens = expr.split()
    for k in range(len(tokens)):
        part = " ".join(tokens[k:] if keep_end else tokens[: len(tokens) - k])
        if not part or not (part[0].isdigit() or part[0] in ".(-"):
            continue
        node = _parse(_PERCENT_RE.sub(r"(\1/100)", part))
        if node is not None:
            return part, node
    return None


def _has_op(node: ast.expr) -> bool:
    return any(isinstance(n, ast.BinOp) for n in ast.walk(node))


def _close(value: float, claimed: float, shown: str) -> bool:
    if abs(value - claimed) <= 1e-4 * max(abs(value), abs(claimed)):
        return True
    decimals = len(shown.split(".", 1)[1]) if "." in shown else 0
    return abs(value - claimed) < (10.0**-decimals if decimals else 0.005 + 1e-9)


def _claims(node: ast.expr, text: str) -> list[tuple[float, str]]:
    """Values the claimed side may mean: the whole side ("N%" as N/100), or its leading number."""
    out: list[tuple[float, str]] = []
    number = _NUMBER_RE.match(text.lstrip("("))
    shown = number.group(0) if number is not None and not _has_op(node) else ""
    whole = _value(node)
    if whole is not None:
        out.append((whole, shown))
    if number is not None and (value := safe_eval(number.group(0))) is not None:
        out.append((value, number.group(0)))  # running chain "5 * 3 = 15 + 2 = 17", or "= 20%"
    return out


def _check_pair(lhs: str, rhs: str) -> EquationCheck | None:
    if rhs.rstrip().endswith(("+", "-", "*", "/")):
        return None  # "3*30 = 30 + M": the right side continues into something we cannot read
    left, right = _parse_side(lhs, keep_end=True), _parse_side(rhs, keep_end=False)
    if left is None or right is None:
        return None
    (left_text, left_node), (right_text, right_node) = left, right
    if not _has_op(left_node):
        return None  # "x = 5 = 5", or a reversed "12 = 3 * 4" whose number may be a fragment
    values = [_value(left_node)]
    if "%" in left_text:  # prose is loose about "%": "$7500/75% = $100" means 7500 / 75
        values.append(safe_eval(left_text.replace("%", "")))
    claims = _claims(right_node, right_text)
    values = [v for v in values if v is not None]
    if not values or not claims:
        return None
    matched = [v for v in values if any(_close(v, c, shown) for c, shown in claims)]
    return EquationCheck(left_text, right_text, (matched or values)[0], bool(matched))


def _chain_checks(
    chain: str, max_pairs: int, fragment_start: bool = False, fragment_end: bool = False
) -> list[EquationCheck]:
    segments = chain.split("=", max_pairs + 1)[: max_pairs + 1]
    checks = []
    last = len(segments) - 2
    for k in range(len(segments) - 1):
        if (k == 0 and fragment_start) or (k == last and fragment_end):
            continue
        if (check := _check_pair(segments[k], segments[k + 1])) is not None:
            checks.append(check)
    return checks


def check_step(text: str) -> list[EquationCheck]:
    """Every checkable equation in ``text`` (annotations first), deduplicated, at most 32."""
    text = text[:MAX_STEP_CHARS]
    chains = [
        (_normalise(m.group(1)).replace("\n", " "), False, False)
        for m in _ANNOTATION_RE.finditer(text)
    ]
    prose = _normalise(_ANNOTATION_RE.sub("", text))
    for run in _RUN_RE.finditer(prose):
        if "=" in run.group(0):
            before = prose[max(0, run.start() - 64) : run.start()]
            glued_after = _GLUED_AFTER_RE.match(prose, run.end() - 1) is not None
            fragment_before = _FRAGMENT_BEFORE_RE.search(before) is not None
            chains.append((run.group(0), fragment_before, glued_after))
    checks: list[EquationCheck] = []
    pairs_left = MAX_PAIRS_PER_STEP
    for chain, fragment_start, fragment_end in chains:
        if pairs_left <= 0:
            break
        pairs = min(chain.count("="), pairs_left)
        checks += _chain_checks(chain, pairs, fragment_start, fragment_end)
        pairs_left -= pairs
    unique: dict[tuple[str, str], EquationCheck] = {}
    for c in checks:  # "48/2 = <<48/2=24>>24" states one equation twice
        unique.setdefault((c.lhs.replace(" ", "").strip("()"), c.rhs.replace(" ", "")), c)
    return list(unique.values())[:MAX_CHECKS_PER_STEP]


def _count(text: str) -> tuple[int, int]:
    """(correct, checked) for a step."""
    checks = check_step(text)
    return sum(c.correct for c in checks), len(checks)


# Sibling paths share their prefix steps, so the same step text is scored many times.
_count_cached = functools.lru_cache(maxsize=16_384)(_count)


def _tally(text: str) -> tuple[int, int]:
    # A step is <= 256 tokens; only such texts are cached, which bounds the cache's memory.
    return _count_cached(text) if len(text) <= _CACHED_STEP_CHARS else _count(text)


def score_step(text: str, *, neutral: float = 0.5) -> float:
    """Reward of one step in [0.05, 0.95], or ``neutral`` when it has no checkable arithmetic."""
    correct, checked = _tally(text)
    if checked == 0:
        return neutral
    smoothed = (correct + 0.5 * _PRIOR_WEIGHT) / (checked + _PRIOR_WEIGHT)
    return min(_CEILING, max(_FLOOR, smoothed))


class ArithmeticRewardModel(RewardModel):
    """The arithmetic checker behind the :class:`RewardModel` interface (pure CPU, no engine).

    Scores depend on each step's text only; the question is unused. Scoring is microseconds per step
    (cached per distinct step), so it runs on the event loop and yields between paths.
    """

    name = "arithmetic"
    max_score = _CEILING  # scores are clipped to [0.05, 0.95]

    def __init__(self, neutral: float = 0.5) -> None:
        if not 0.0 <= neutral <= 1.0:
            raise ValueError(f"neutral must be in [0, 1], got {neutral!r}")
        self.neutral = neutral

    async def score(
        self,
        question: str,
        steps_batch: Sequence[Sequence[str]],
        *,
        meter: UsageMeter | None = None,
    ) -> list[list[float]]:
        """Pure CPU: nothing to charge to ``meter`` (its FLOPs are negligible)."""
        out = []
        for k, steps in enumerate(steps_batch):
            out.append([score_step(step, neutral=self.neutral) for step in steps])
            if k % 64 == 63:
                await asyncio.sleep(0)
        return out
