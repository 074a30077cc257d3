"""Prompt construction: the paper's zero-shot template, k-shot exemplars, chat formats."""

from __future__ import annotations

import pytest

from loadtest.prompts import DEFAULT_TEMPLATE, PromptBuilder, chatml, worked_solution

SOLUTION = "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"


def test_default_is_the_papers_zero_shot_cot() -> None:
    assert DEFAULT_TEMPLATE == "Q: {question}\nA: Let's think step by step."
    assert PromptBuilder()("What is 2+2?") == "Q: What is 2+2?\nA: Let's think step by step."


def test_template_needs_question_and_tolerates_braces() -> None:
    with pytest.raises(ValueError, match="question"):
        PromptBuilder(template="no placeholder")
    assert PromptBuilder(template="{question} {x}")("a {b}") == "a {b} {x}"


def test_worked_solution_drops_calculator_marks() -> None:
    assert worked_solution(SOLUTION) == "She has 3 + 4 = 7 apples.\nThe answer is 7."


def test_k_shot() -> None:
    build = PromptBuilder(shots=(("Q1?", SOLUTION), ("Q2?", "1 + 1 = 2\n#### 2")))
    assert build("Q3?") == (
        "Q: Q1?\nA: Let's think step by step. She has 3 + 4 = 7 apples.\nThe answer is 7.\n\n"
        "Q: Q2?\nA: Let's think step by step. 1 + 1 = 2\nThe answer is 2.\n\n"
        "Q: Q3?\nA: Let's think step by step."
    )


def test_chatml() -> None:
    build = PromptBuilder(chat="chatml", shots=(("Q1?", "#### 1"),))
    assert build("Q2?") == (
        "<|im_start|>user\nQ: Q1?\nA: Let's think step by step.<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 1.<|im_end|>\n"
        "<|im_start|>user\nQ: Q2?\nA: Let's think step by step.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml([]) == "<|im_start|>assistant\n"


def test_tokenizer_chat_template() -> None:
    from tests.tiny_model import build_tokenizer

    tok = build_tokenizer()  # the tiny test model's tokenizer has a ChatML template
    build = PromptBuilder(chat="tokenizer", tokenizer=tok)
    assert build("Q?") == PromptBuilder(chat="chatml")("Q?")
    with pytest.raises(ValueError, match="tokenizer"):
        PromptBuilder(chat="tokenizer")
