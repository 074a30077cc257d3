"""GSM8K-style final-answer extraction and comparison.

One module shared by the server (REBASE votes over the leaves' answers) and the load-test tool
(accuracy), so that a "correct" answer means the same thing in both places.

Normalisation decisions (why): GSM8K references are plain numbers ("#### 1234"), while models write
money, thousands separators and percentages ("$1,234.50", "25%"). We therefore strip ``$``,
thousands commas, a leading ``+`` and a trailing ``%`` (GSM8K writes a percentage answer as the bare
number), and print the value canonically: "3.50" -> "3.5", "18.0" -> "18", "-0" -> "0". Fractions
"a/b" are kept as text ("-1/2"); :func:`answers_match` compares them by value. Scientific notation
is not a GSM8K form and is rejected.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = [
    "answers_match",
    "extract_answer",
    "first_integer",
    "marked_answer",
    "normalize_number",
]

# A number as written in prose: optional sign and "$", thousands groups or plain digits, decimals.
# The grouped form must not be followed by another digit ("1,2345" is "1" and "2345", not "1,234").
_NUM = (
    r"(?P<sign>[-+\u2212]?)(?:\$\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)"
)
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*" + _NUM)
# Second tier, earliest match wins: "\boxed{N}" (also "\boxed{\frac{a}{b}}"), "(final) answer is N",
# "answer: N", "answer (arabic numerals) is N".
_BOXED_RE = re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?" + _NUM)
_BOXED_FRAC_RE = re.compile(r"\\boxed\{\s*(?P<sign>-?)\\d?frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}")
_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:\(arabic numerals\)\s*)?(?:is|:|=)\s*:?\s*(?:\*\*|\\\(|\$\$)?\s*" + _NUM,
    re.IGNORECASE,
)
_PLAIN_NUMBER_RE = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+")
_FRACTION_RE = re.compile(r"(-?)(\d+)\s*/\s*(\d+)")
_TRIGGER = "therefore, the answer (arabic numerals) is"


def normalize_number(s: str) -> str | None:
    """Canonical text of a number ("$1,234.50" -> "1234.5"), or None if ``s`` is not one number."""
    t = s.strip().replace("\u2212", "-").rstrip(".").strip()
    sign = ""
    if t and t[0] in "+-":
        sign, t = ("-" if t[0] == "-" else ""), t[1:].lstrip()
    if t.startswith("$"):
        t = t[1:].lstrip()
    if t.endswith("%"):
        t = t[:-1].rstrip()
    if (frac := _FRACTION_RE.fullmatch(t)) is not None:
        if int(frac.group(3)) == 0:
            return None
        minus = "-" if (sign == "-") != (frac.group(1) == "-") else ""
        return f"{minus}{int(frac.group(2))}/{int(frac.group(3))}"
    if not _PLAIN_NUMBER_RE.fullmatch(t):
        return None
    try:
        value = Decimal(sign + t.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _number_from_match(match: re.Match[str]) -> str | None:
    return normalize_number(match.group("sign") + match.group("num"))


def _numbers(text: str) -> list[str]:
    """Every number in ``text``; a "-" right after a word or ")" is subtraction, not a sign."""
    out = []
    for m in _NUM_RE.finditer(text):
        sign = m.group("sign")
        before = text[: m.start()].rstrip()
        if sign and before and (before[-1].isalnum() or before[-1] in ")]}"):
            sign = ""
        if (value := normalize_number(sign + m.group("num"))) is not None:
            out.append(value)
    return out


def marked_answer(text: str) -> str | None:
    """The answer ``text`` *states* with a marker, normalised; None if it states none.

    Markers: the first "#### N" (GSM8K's format), else the first "\\boxed{N}" / "The answer is N"
    / "The answer is: N" (Math-Shepherd) / "answer: N" (case-insensitive). N may be an integer,
    a decimal, a fraction or money. The *first* occurrence wins because a model that keeps going
    after its answer usually starts an invented next problem. REBASE uses this to decide that a
    path is finished, so "finished" and "the answer we vote with" can never disagree.
    """
    if (m := _HASH_RE.search(text)) is not None:
        return _number_from_match(m)
    marked = [m for r in (_BOXED_FRAC_RE, _BOXED_RE, _ANSWER_IS_RE) if (m := r.search(text))]
    if not marked:
        return None
    m = min(marked, key=lambda m: m.start())  # min() is stable: a \frac beats its own digits
    if m.re is _BOXED_FRAC_RE:
        return normalize_number(f"{m['sign']}{m['num']}/{m['den']}")
    return _number_from_match(m)


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text``, normalised; None if ``text`` holds no number.

    The marked answer (:func:`marked_answer`) if there is one, else the last number in the text:
    with no marker the last number is the usual conclusion of a chain of thought.
    """
    if (answer := marked_answer(text)) is not None:
        return answer
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def first_integer(text: str) -> str | None:
    """The paper's protocol: first number after "Therefore, the answer (arabic numerals) is".

    Follows the Zero-shot-CoT answer cleansing the paper cites: drop commas, take the first
    ``-?\\d+\\.?\\d*`` token. Despite the name a decimal is kept ("3.5", not "3"): truncating it
    could turn a wrong answer into a right one. If the trigger is absent the whole text is searched;
    if it occurs several times the text after the last one is used (the protocol appends it last).
    """
    lowered = text.lower()
    at = lowered.rfind(_TRIGGER)
    tail = text[at + len(_TRIGGER) :] if at >= 0 else text
    m = re.search(r"-?\d+(?:\.\d+)?", tail.replace(",", ""))
    return normalize_number(m.group(0)) if m is not None else None


def _value(answer: str | None) -> Fraction | None:
    norm = normalize_number(answer) if answer is not None else None
    if norm is None:
        return None
    return Fraction(norm)


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """True if both are numbers equal within 1e-6 (absolute, or relative above magnitude 1).

    Both sides are normalised first, so "$1,234.00" matches "1234" and "1/2" matches "0.5".
    None (no answer) never matches anything, not even another None.
    """
    a, b = _value(predicted), _value(reference)
    if a is None or b is None:
        return False
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)), abs(float(b)))
