"""Convert vLLM's per-token logprob dicts into the OpenAI completions `logprobs` object."""

from __future__ import annotations

from server.api.protocol import Logprobs
from server.core.requests import ChoiceDelta

# vLLM's OpenAI server writes a -inf prompt logprob as this floor (JSON has no -inf).
LOGPROB_FLOOR = -9999.0


class LogprobsBuilder:
    """Accumulates one choice's logprobs across deltas (text offsets run across deltas)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.out = Logprobs()
        self.offset = 0

    def add(self, delta: ChoiceDelta) -> Logprobs:
        """Append `delta`'s tokens; returns the logprobs of just this delta (for SSE)."""
        part = Logprobs()
        for token_id, top in zip(delta.token_ids, delta.logprobs or [], strict=False):
            token = self._token_text(token_id, top)
            sampled = top.get(token_id)
            part.tokens.append(token)
            part.token_logprobs.append(sampled.logprob if sampled else None)
            part.top_logprobs.append(
                {self._token_text(tid, top): lp.logprob for tid, lp in top.items()}
            )
            part.text_offset.append(self.offset)
            self.offset += len(token)
        self._extend(part)
        return part

    def add_prompt(self, token_ids: list[int], logprobs: list[dict | None] | None) -> Logprobs:
        """Append the prompt's tokens (`echo`), before any generated one; returns them.

        As OpenAI's legacy completions: the first token has no logprob (nothing precedes it),
        so its `token_logprobs` and `top_logprobs` entries are null."""
        part = Logprobs()
        entries = logprobs or [None] * len(token_ids)
        for token_id, top in zip(token_ids, entries, strict=True):
            token = self._token_text(token_id, top or {})
            sampled = top.get(token_id) if top else None
            part.tokens.append(token)
            part.token_logprobs.append(_finite(sampled.logprob) if sampled else None)
            part.top_logprobs.append(
                {self._token_text(tid, top): _finite(lp.logprob) for tid, lp in top.items()}
                if top
                else None
            )
            part.text_offset.append(self.offset)
            self.offset += len(token)
        self._extend(part)
        return part

    def _extend(self, part: Logprobs) -> None:
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.out, name).extend(getattr(part, name))

    def _token_text(self, token_id: int, top: dict) -> str:
        entry = top.get(token_id)
        if entry is not None and entry.decoded_token is not None:
            return entry.decoded_token
        return self.tokenizer.decode([token_id])

    def result(self) -> Logprobs:
        return self.out


def _finite(logprob: float) -> float:
    return logprob if logprob > LOGPROB_FLOOR else LOGPROB_FLOOR  # -inf and NaN alike


def joined(first: Logprobs, second: Logprobs) -> Logprobs:
    """`first`'s entries, then `second`'s (one stream chunk carrying both)."""
    return Logprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )
