"""The GSM8K questions the REBASE benchmarks use, and the prompt they are asked in.

Why not ``loadtest.data``: that module is the replay tool's (and may change with it); the
benchmarks only need "the first N test questions" from the original JSONL file, read the same
way on every run so the trees are comparable across configurations and days.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TEST_FILE = Path("/work/shared/data/gsm8k/test.jsonl")
PROMPT = "Q: {question}\nA: Let's think step by step.\n"


@dataclass(frozen=True)
class Question:
    index: int  # line number in the test file (0-based)
    question: str
    answer: str  # the number after "####"

    @property
    def prompt(self) -> str:
        return PROMPT.format(question=self.question)


def load_questions(
    path: Path = DEFAULT_TEST_FILE, count: int = 16, start: int = 0
) -> list[Question]:
    """Lines ``start .. start+count-1`` of the file, in file order."""
    questions: list[Question] = []
    with path.open() as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if len(questions) == count:
                break
            row = json.loads(line)
            answer = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            questions.append(Question(i, row["question"], answer))
    return questions
