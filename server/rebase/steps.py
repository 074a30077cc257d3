"""Step formats: where a step ends, what the reward model sees, and when a path is finished.

Two formats (docs/architecture.md, "REBASE"): a plain delimiter (a newline for GSM8K-style
text) or numbered `Step k:` headers as Math-Shepherd-style PRMs and the paper's protocol use.
A step is one engine call that stops at the end of the step (stop string kept in the output,
so the text and the token ids agree) or at `max_step_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.answers import marked_answer
from server.rebase.params import RebaseParams
from server.rebase.tree import StepEnd


def has_final_answer(text: str) -> bool:
    """A finished solution states its answer ("#### 42", "The answer is: 4.5", "\\boxed{1/2}").

    Defined by the vote's own extractor, so every path that ends as "answer" votes with the
    answer that made it end (and none ends on a marker the vote could not read).
    """
    return marked_answer(text) is not None


@dataclass(frozen=True)
class StepFormat:
    params: RebaseParams

    def root_prefix(self) -> str:
        """Text forced after the prompt before the first step."""
        step_k = self.params.step_format == "step_k"
        return "Step 1:" if step_k and self.params.first_step_header else ""

    def stop_strings(self, depth: int) -> list[str]:
        """Stop strings of the step generated at `depth` (1-based)."""
        if self.params.step_format == "step_k":
            return [f"Step {depth + 1}:"]
        return [self.params.step_delimiter]

    def step_text(self, generated: str, depth: int) -> str:
        """The step as a reward model should see it: without delimiter or next header."""
        for stop in self.stop_strings(depth):
            if generated.endswith(stop):
                generated = generated[: -len(stop)]
        return generated.strip()

    def classify(
        self,
        *,
        text: str,
        finish_reason: str | None,
        stop_reason: int | str | None,
        path_tokens: int,
        max_path_tokens: int,
    ) -> StepEnd:
        """Decide whether a freshly generated step ends its path, and why."""
        if finish_reason == "stop" and not isinstance(stop_reason, str):
            return "eos"  # EOS or a stop token: the model ended the solution
        if has_final_answer(text):
            return "answer"
        if path_tokens >= max_path_tokens:
            return "length"
        return "step"
