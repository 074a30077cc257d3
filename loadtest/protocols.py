"""Method configs and presets: the paper's experiment ("seed protocol") as one command.

Why data, not code: the REBASE parameter names are the server's to decide and may still change;
everything the seed protocol sends lives in :data:`SEED_CONFIGS` below, one dict to adjust.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from loadtest.conventions import SEED_STOP
from loadtest.prompts import DEFAULT_TEMPLATE

# Keys of a config's parameters that steer the client and are never sent to the server.
ANSWER_METHOD_KEY = "answer_method"


@dataclass(frozen=True)
class MethodConfig:
    """One row of the report: a label, the server `method`, and extra request body fields.

    `body` holds per-method blocks (`{"rebase": {...}}`) and any overrides of the run's sampling
    fields (`n`, `max_tokens`, `temperature`). `answer_method` is the method of the
    answer-extraction pass (see `RunSettings.answer_suffix`); None means the same method.
    """

    name: str
    method: str
    body: dict[str, Any] = field(default_factory=dict)
    answer_method: str | None = None

    @classmethod
    def from_params(cls, name: str, params: dict[str, Any] | None = None) -> MethodConfig:
        """`--method-params` entry -> config. A "method" key lets a label differ from the method
        ("rebase w=3" -> method "rebase"); "answer_method" is client-side only."""
        body = copy.deepcopy(params or {})
        if not isinstance(body, dict):
            raise ValueError(f"parameters of {name!r} must be a JSON object")
        method = str(body.pop("method", name))
        answer_method = body.pop(ANSWER_METHOD_KEY, None)
        return cls(name=name, method=method, body=body, answer_method=answer_method)

    @property
    def blocks(self) -> dict[str, Any]:
        """The per-method parameter blocks (the object-valued body fields)."""
        return {k: v for k, v in self.body.items() if isinstance(v, dict)}

    @property
    def methods_needed(self) -> set[str]:
        return {self.method, self.answer_method or self.method}


@dataclass(frozen=True)
class Protocol:
    """A preset: the data slice, prompt, sampling and configs of one experiment."""

    name: str
    split: str
    shuffle: bool
    seed: int
    limit: int
    template: str
    temperature: float
    max_tokens: int
    n: int
    answer_suffix: str | None
    answer_max_tokens: int
    extractor: str
    configs: tuple[MethodConfig, ...]
    concurrency: int = 1


# ---- the seed protocol ("Inference Scaling vs Reasoning", GSM8K, 128 questions) -----------------
ANSWER_SUFFIX = "\nTherefore, the answer (arabic numerals) is"

# REBASE parameters shared by the three widths. Names follow the server's `rebase` block.
# "Step k:" headers as the seed writes them: the first step has none, headers from step 2.
SEED_REBASE = {
    "max_step_tokens": 96,
    "balance_temperature": 0.2,
    "step_format": "step_k",
    "first_step_header": False,
}

# label -> request body fields (+ client-side "method" / "answer_method"). Baseline and
# Quiet-STaR draw 8 samples and vote; REBASE votes over its own leaves and returns one answer.
# The answer-extraction pass ("Therefore, the answer ... is" + 12 tokens) decodes plainly after
# a REBASE tree (a 12-token tree search would be meaningless) and with Quiet-STaR after Quiet-STaR.
# The sampled passes stop where the seed's stop: a second "Q:" or three newlines (REBASE steps
# stop at their "Step k:" headers). The combined row's width is the seed config's: 6.
# The seed's REBASE answer (top-scored leaf) and pruning (children scoring <= 0.1) are options:
# --rebase-aggregation best_of_n --rebase-prune-score 0.1 (default: our weighted vote, no pruning).
SEED_CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"method": "baseline", "n": 8, "stop": SEED_STOP},
    "quiet_star": {"method": "quiet_star", "n": 8, "stop": SEED_STOP},
    "quiet_star+rebase": {
        "method": "quiet_star+rebase",
        "rebase": {"width": 6, **SEED_REBASE},
        ANSWER_METHOD_KEY: "quiet_star",
    },
    "rebase w=3": {
        "method": "rebase",
        "rebase": {"width": 3, **SEED_REBASE},
        ANSWER_METHOD_KEY: "baseline",
    },
    "rebase w=6": {
        "method": "rebase",
        "rebase": {"width": 6, **SEED_REBASE},
        ANSWER_METHOD_KEY: "baseline",
    },
    "rebase w=16": {
        "method": "rebase",
        "rebase": {"width": 16, **SEED_REBASE},
        ANSWER_METHOD_KEY: "baseline",
    },
}

SEED = Protocol(
    name="seed",
    split="test",
    shuffle=True,
    seed=42,
    limit=128,
    template=DEFAULT_TEMPLATE,
    temperature=1.0,
    max_tokens=384,
    n=1,  # per-config `n` above
    answer_suffix=ANSWER_SUFFIX,
    answer_max_tokens=12,
    extractor="seed",
    configs=tuple(MethodConfig.from_params(k, v) for k, v in SEED_CONFIGS.items()),
    concurrency=1,  # the paper answered one question at a time
)

PROTOCOLS: dict[str, Protocol] = {SEED.name: SEED}


# ---- the paper's table (per question), for printing next to ours --------------------------------
@dataclass(frozen=True)
class PaperRow:
    label: str
    accuracy: float  # fraction
    tflops: float  # per question
    seconds: float  # per question
    efficiency: float  # as printed in the paper


PAPER_ROWS: dict[str, PaperRow] = {
    "baseline": PaperRow("baseline Mistral-7B", 0.1016, 11.22, 52.47, 17.29),
    "quiet_star": PaperRow("Quiet-STaR", 0.3203, 12.73, 554.66, 15.12),
    "quiet_star+rebase": PaperRow("REBASE + Quiet-STaR", 0.0938, 4.25, 143.66, 15.47),
    "rebase w=3": PaperRow("REBASE w=3", 0.1094, 2.35, 8.47, 601.14),
    "rebase w=6": PaperRow("REBASE w=6", 0.1016, 4.96, 17.82, 116.85),
    "rebase w=16": PaperRow("REBASE w=16", 0.1250, 13.57, 46.90, 24.84),
}
