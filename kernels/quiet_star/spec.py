"""Per-request Quiet-STaR arguments, as they travel in `SamplingParams.extra_args`.

Why a plain dict with a schema here: the gateway builds it, the engine-core process reads it;
both sides import this one module so the keys cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

EXTRA_ARGS_KEY = "quiet_star"
# Set by the continuation scheduler when it re-announces a request to the model runner in the
# middle of a round: the round index of the runner's first sampled token (its output list
# restarts at 0). Absent = 0.
ROUND_STEP_KEY = "quiet_star_round_step"
MIXING_SOURCES = ("head", "request")
_ID_TUPLES = (
    "start_token_ids",
    "end_token_ids",
    "banned_token_ids",
    "talk_banned_token_ids",
    "stop_token_ids",
)


def step_positions(start_tokens: int, thought_tokens: int, end_tokens: int) -> int:
    """Engine positions of one thinking step: the start delimiter's tokens, the thought, the
    end delimiter's tokens, then the talk token (s + t + e + 1; t + 3 only with one-token
    delimiters). The one formula: the processor, the scheduler, the gateway's validation,
    decoder, work cap and usage all read it from here."""
    return start_tokens + thought_tokens + end_tokens + 1


def sequence_positions(max_tokens: int, steps: int, thoughts: int | None = None) -> int:
    """Engine positions one sequence of up to `max_tokens` visible tokens may decode when
    `thoughts` of them (default: every one) are preceded by a thought of `steps - 1` hidden
    positions (`steps` from `step_positions`)."""
    thoughts = max_tokens if thoughts is None else min(thoughts, max_tokens)
    return max_tokens + thoughts * (steps - 1)


@dataclass(frozen=True)
class QuietStarSpec:
    """One Quiet-STaR step: think `thought_tokens` tokens, then emit one mixed talk token."""

    key: str  # unique per engine request: keys the saved base distribution across preemption
    thought_tokens: int
    mixing_weight: float
    thought_temperature: float
    temperature: float  # the user's, applied to the talk token (0 = greedy)
    top_p: float
    start_token_ids: tuple[int, ...]  # forced first (one token for a Quiet-STaR checkpoint)
    end_token_ids: tuple[int, ...]  # forced after the thought
    banned_token_ids: tuple[int, ...]  # never sampled inside a thought (start, end, EOS)
    # "head": w comes from the served checkpoint's mixing head (kernels/quiet_star/model.py);
    # "request": w is `mixing_weight`.
    mixing_source: str = "request"
    talk_banned_token_ids: tuple[int, ...] = ()  # never the talk token (thought/added ids)
    top_k: int = 0  # the user's, applied to the talk token (0 = off)
    min_p: float = 0.0
    # Continuation (kernels/quiet_star/scheduler.py): one engine request per sequence, rolled
    # back after every talk token, instead of one engine request per output token.
    continuation: bool = False
    # Continuation only: while fewer than `min_tokens` talk tokens follow the first
    # `context_len` tokens, the talk token cannot be one of `stop_token_ids` (the per-token
    # path bans them through `talk_banned_token_ids` instead).
    context_len: int = 0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        """Engine steps of one Quiet-STaR token: start, t thoughts, end, talk."""
        return step_positions(
            len(self.start_token_ids), self.thought_tokens, len(self.end_token_ids)
        )

    @property
    def thought_steps(self) -> int:
        """Tokens generated that the user never sees (start + thought + end)."""
        return self.steps - 1

    def phase(self, step: int) -> tuple[str, int]:
        """What the request's `step`-th sampled token is: ("start"|"thought"|"end"|"talk"|
        "done", offset within that phase)."""
        s, t, e = len(self.start_token_ids), self.thought_tokens, len(self.end_token_ids)
        if step < s:
            return "start", step
        if step < s + t:
            return "thought", step - s
        if step < s + t + e:
            return "end", step - s - t
        if step == s + t + e:
            return "talk", 0
        return "done", 0

    def forced_from(self, step: int) -> tuple[int, ...]:
        """The tokens the round forces from round index `step` up to the next token the model
        must sample: the rest of the start delimiter, or the end delimiter. (`start[0]` is
        forced too, but it is sampled at the base row, which the talk token needs.)"""
        forced: list[int] = []
        while True:
            phase, offset = self.phase(step + len(forced))
            if phase == "start" and offset > 0:
                forced.append(self.start_token_ids[offset])
            elif phase == "end":
                forced.append(self.end_token_ids[offset])
            else:
                return tuple(forced)

    def to_extra_args(self) -> dict:
        data = asdict(self)
        for name in _ID_TUPLES:
            data[name] = list(data[name])
        return {EXTRA_ARGS_KEY: data}

    def to_vllm_xargs(self) -> dict[str, str]:
        """The same arguments for a remote `vllm serve` replica: its OpenAI API's `vllm_xargs`
        takes flat values only, so the spec travels JSON-encoded under the same key and
        `from_extra_args` decodes it (docs/scaling.md)."""
        return {EXTRA_ARGS_KEY: json.dumps(self.to_extra_args()[EXTRA_ARGS_KEY])}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> QuietStarSpec | None:
        if not extra_args or EXTRA_ARGS_KEY not in extra_args:
            return None
        raw = extra_args[EXTRA_ARGS_KEY]
        # In-process engine: a dict; through `vllm serve`'s `vllm_xargs`: a JSON string.
        data = dict(json.loads(raw) if isinstance(raw, str) else raw)
        for name in _ID_TUPLES:
            data[name] = tuple(data.get(name, ()))
        spec = cls(**data)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not self.start_token_ids or not self.end_token_ids:
            raise ValueError("quiet_star needs thought start and end tokens")
        if self.thought_tokens < 0:
            raise ValueError("quiet_star.thought_tokens must be >= 0")
        if not 0.0 <= self.mixing_weight <= 1.0:
            raise ValueError("quiet_star.mixing_weight must be in [0, 1]")
        if self.thought_temperature <= 0:
            raise ValueError("quiet_star.thought_temperature must be > 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")
        if self.min_tokens < 0 or self.context_len < 0:
            raise ValueError("quiet_star.min_tokens and context_len must be >= 0")
        if self.mixing_source not in MIXING_SOURCES:
            raise ValueError(f"quiet_star.mixing_source must be one of {MIXING_SOURCES}")
