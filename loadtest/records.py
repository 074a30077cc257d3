"""Per-problem records: one JSON line per (problem, config), the single source of every report.

Why self-contained lines: `python -m loadtest report RECORDS.jsonl` rebuilds the table and plots
from the records alone, so each line carries its config, model and protocol, and wall-clock
start/end times (the runtime of a config is the span of its records).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# usage field -> record field; FLOPs live one level down in usage["flops"].
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "thought_tokens")
_FLOPS_FIELDS = {
    "flops_executed": "executed",
    "flops_nominal": "nominal",
    "policy_flops_executed": "policy_executed",
    "policy_flops_nominal": "policy_nominal",
    "reward_flops_executed": "reward_executed",
    "reward_flops_nominal": "reward_nominal",
}


@dataclass
class Record:
    """One problem answered by one config (all its requests: votes, answer-extraction pass)."""

    config: str  # label in the report, e.g. "rebase w=3"
    method: str  # the server's `method`
    problem_id: str
    reference: str
    predicted: str | None = None
    correct: bool = False
    votes: list[str | None] = field(default_factory=list)  # one extracted answer per sample
    latency: float | None = None  # seconds, first request sent -> last response done
    ttft: float | None = None  # seconds to the first generated text of the first request
    start_time: float = 0.0  # unix time
    end_time: float = 0.0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    thought_tokens: int = 0
    flops_executed: float = 0.0
    flops_nominal: float = 0.0
    policy_flops_executed: float = 0.0
    policy_flops_nominal: float = 0.0
    reward_flops_executed: float = 0.0
    reward_flops_nominal: float = 0.0
    # tokens as the paper's seed code charged them (loadtest/conventions.py); None: not known
    # (records written before it was counted)
    seed_tokens: int | None = None
    # REBASE's early-stop setting ("off", "exact", "confidence=0.95"); None for other methods
    # and for records written before early stopping (which ran every search to the end).
    early_stop: str | None = None
    error: str | None = None
    model: str | None = None
    protocol: str | None = None
    usages: list[dict[str, Any]] = field(default_factory=list)  # raw `usage` of each request
    texts: list[str] | None = None  # generated texts, only with --save-text

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        """Charge one request's `usage` to this record (tokens and every FLOPs split)."""
        self.requests += 1
        if not usage:
            return
        self.usages.append(usage)
        for name in _TOKEN_FIELDS:
            setattr(self, name, getattr(self, name) + int(usage.get(name) or 0))
        flops = usage.get("flops") or {}
        for name, key in _FLOPS_FIELDS.items():
            setattr(self, name, getattr(self, name) + float(flops.get(key) or 0.0))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["texts"] is None:
            del d["texts"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def write_records(path: Path, records: Iterable[Record]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict()) + "\n")


def append_record(path: Path, record: Record) -> None:
    """Append one line as soon as a problem finishes, so a crashed run keeps what it did."""
    with path.open("a") as f:
        f.write(json.dumps(record.to_dict()) + "\n")


def read_records(path: Path) -> list[Record]:
    with path.open() as f:
        return [Record.from_dict(json.loads(line)) for line in f if line.strip()]


def by_config(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by config, in the order configs first appear."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.config, []).append(r)
    return groups
