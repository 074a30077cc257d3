"""Prompt construction: a template, optional k-shot exemplars, optional chat formatting.

Why so little: the paper's prompt is one zero-shot chain-of-thought line, and every knob here
changes accuracy, so each is explicit on the command line and recorded in the run's summary.

Chat formatting wraps the *rendered completion prompt* as the user turn (k-shot exemplars become
earlier user/assistant turns) and leaves the assistant turn open; the request still goes to
/v1/completions, so the server needs nothing chat-specific.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_TEMPLATE = "Q: {question}\nA: Let's think step by step."
_CALCULATOR = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$", re.DOTALL)

ChatFormat = Literal["chatml", "tokenizer"]


def worked_solution(answer: str) -> str:
    """A GSM8K solution as exemplar text: calculator annotations dropped, "#### N" spelled out."""
    text = _CALCULATOR.sub("", answer)
    return _FINAL.sub(lambda m: f"\nThe answer is {m.group(1)}.", text).strip()


def chatml(messages: Sequence[dict[str, str]]) -> str:
    """ChatML (`<|im_start|>role\\n...<|im_end|>`) with the assistant turn opened."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def load_chat_tokenizer(path: str) -> Any:
    """The served model's tokenizer, for its own chat template (transformers, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@dataclass(frozen=True)
class PromptBuilder:
    """Turns a question into the prompt text sent to /v1/completions.

    `shots` are (question, solution) pairs, rendered with the same template followed by the
    worked solution. `chat` = None sends plain text; "chatml" wraps it in ChatML; "tokenizer"
    uses `tokenizer.apply_chat_template` (the served model's own template).
    """

    template: str = DEFAULT_TEMPLATE
    shots: tuple[tuple[str, str], ...] = ()
    chat: ChatFormat | None = None
    tokenizer: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if "{question}" not in self.template:
            raise ValueError("the prompt template must contain '{question}'")
        if self.chat == "tokenizer" and self.tokenizer is None:
            raise ValueError("chat format 'tokenizer' needs a tokenizer (--tokenizer PATH)")

    def _render(self, question: str) -> str:
        return self.template.replace("{question}", question)

    def __call__(self, question: str) -> str:
        if self.chat is None:
            parts = [f"{self._render(q)} {worked_solution(a)}" for q, a in self.shots]
            return "\n\n".join([*parts, self._render(question)])
        messages: list[dict[str, str]] = []
        for q, a in self.shots:
            messages.append({"role": "user", "content": self._render(q)})
            messages.append({"role": "assistant", "content": worked_solution(a)})
        messages.append({"role": "user", "content": self._render(question)})
        if self.chat == "chatml":
            return chatml(messages)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
