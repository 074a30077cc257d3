"""Answer extraction and comparison: what "correct" means for REBASE votes and the load test."""

import pytest

from server.core.answers import answers_match, extract_answer, first_integer, normalize_number

TRIGGER = "Therefore, the answer (arabic numerals) is"
GSM8K_REFERENCE = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 1,234", "1234"),
        ("#### 72", "72"),
        (GSM8K_REFERENCE, "72"),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10", "10"),
        ("#### -5", "-5"),
        ("#### $1,000,000.00", "1000000"),
        ("The answer is $18.", "18"),
        ("So the answer is 18 dollars.", "18"),
        ("The final answer is: -7", "-7"),
        ("The answer is: **42**", "42"),
        ("Final answer: 3.50", "3.5"),
        ("ANSWER: 25%", "25"),
        ("Therefore, the answer (arabic numerals) is 8.", "8"),
        ("\\boxed{42}", "42"),
        ("so we get \\boxed{1,500}.", "1500"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{\\text{18}}", "18"),
        ("-3", "-3"),
        ("3.50", "3.5"),
        ("18.0", "18"),
        (".5 of a pie", "0.5"),
        ("She has 5 apples and eats 2, so 3 are left", "3"),
        ("5-3=2", "2"),  # "-" after a digit is subtraction
        ("COVID-19 cases rose to 250", "250"),
        ("no number here", None),
        ("", None),
        # Markers beat numbers that come later; the first marker wins.
        ("#### 18\n\nQuestion: Tom has 7 apples.\n#### 7", "18"),
        ("The answer is 5.\nQuestion: next one, 9 + 1 = 10", "5"),
        ("I think 3 + 4 = 7. The answer is 7. Then 100 more", "7"),
        ("#### 10 but the answer is 12", "10"),  # "####" outranks "answer is"
        ("1,2345", "2345"),  # not a thousands group: last number is 2345
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,234", "1234"),
        ("$1,234.50", "1234.5"),
        ("3.50", "3.5"),
        ("5.0", "5"),
        ("5.00", "5"),
        ("+7", "7"),
        ("-3", "-3"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("\u22124", "-4"),
        ("25%", "25"),
        ("18.", "18"),
        (" 12 ", "12"),
        (".5", "0.5"),
        ("0.125", "0.125"),
        ("1000000", "1000000"),
        ("1/2", "1/2"),
        ("-3/4", "-3/4"),
        ("1/0", None),
        ("abc", None),
        ("", None),
        ("12,34", None),
        ("1e5", None),
        ("3 4", None),
        ("--3", None),
    ],
)
def test_normalize_number(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("18", "18", True),
        ("$1,234.00", "1234", True),
        ("3.50", "3.5", True),
        ("1/2", "0.5", True),
        ("0.3333333", "1/3", True),
        ("1000000000", "1000000000.0000001", True),  # relative 1e-6 for large magnitudes
        ("18", "19", False),
        ("0.5", "0.51", False),
        (None, "18", False),
        ("18", None, False),
        (None, None, False),
        ("abc", "abc", False),
    ],
)
def test_answers_match(predicted: str | None, reference: str | None, expected: bool) -> None:
    assert answers_match(predicted, reference) is expected


def test_extract_then_match_gsm8k_reference() -> None:
    model_output = "48 / 2 = 24 clips in May. 48 + 24 = 72. The answer is 72."
    assert answers_match(extract_answer(model_output), extract_answer(GSM8K_REFERENCE))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Blah.\nTherefore, the answer (arabic numerals) is 1,234.", "1234"),
        ("Therefore, the answer (arabic numerals) is -5 apples", "-5"),
        ("therefore, the answer (arabic numerals) is 3.5.", "3.5"),
        ("We had 10 apples. Therefore, the answer (arabic numerals) is 8, not 10.", "8"),
        (f"{TRIGGER} 4.\n{TRIGGER} 6", "6"),  # the protocol appends the trigger last
        ("no trigger: 12 then 13", "12"),
        ("Therefore, the answer (arabic numerals) is unknown", None),
    ],
)
def test_first_integer(text: str, expected: str | None) -> None:
    assert first_integer(text) == expected
