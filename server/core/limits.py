"""The per-request work bound: how much engine work one HTTP request may ask for.

Why: admission (`max_pending_requests`) counts requests, but requests differ by orders of
magnitude: 32 prompts x n 16 x a width-64 tree is 32768 engine sequences, enough to fill the
KV cache and the scheduler for everyone else. So before admitting a request the gateway adds up,
over its prompts, what each method says one prompt may hold (`Method.work`): engine sequences
alive at once, and tokens (generated positions, Quiet-STaR thoughts included), and rejects the
request with a 400 naming the limit and the field to reduce when either exceeds its setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from server.core.config import Settings
from server.core.errors import APIError

if TYPE_CHECKING:
    from server.core.requests import RequestWork


def check_request_work(works: Sequence[RequestWork], settings: Settings) -> None:
    """Raise a 400 if the request's prompts (one `RequestWork` each, from `Method.work`)
    together exceed `max_request_sequences` or `max_request_tokens`; `param` is the field that
    contributes most (the one to reduce)."""
    if not works:
        return
    factors = (("prompt", len(works)), *works[0].factors)
    sequences = sum(w.sequences for w in works)
    if sequences > settings.max_request_sequences:
        product = " x ".join(
            f"{value} prompt{'s' if value != 1 else ''}" if name == "prompt" else f"{name}={value}"
            for name, value in factors
        )
        largest = max(factors, key=lambda f: f[1])[0]  # first of equals: prompt, n, ...
        raise APIError(
            f"This request may hold {sequences} engine sequences at once ({product}); the "
            f"limit is max_request_sequences={settings.max_request_sequences}. Reduce "
            f"{_names('the prompt list' if f == 'prompt' else f for f, _ in factors)}.",
            param=largest,
        )
    tokens = sum(w.tokens for w in works)
    if tokens > settings.max_request_tokens:
        per_sequence = max(w.tokens_per_sequence for w in works)
        note = f"; {works[0].token_note}" if works[0].token_note else ""
        raise APIError(
            f"This request may generate up to {tokens} tokens ({sequences} sequences x up to "
            f"{per_sequence} tokens each{note}); the limit is "
            f"max_request_tokens={settings.max_request_tokens}. Reduce max_tokens (or the "
            "sequences).",
            param="max_tokens",
        )


def _names(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
