"""Convert vLLM's per-token logprob dicts into the OpenAI completions `logprobs` object."""

from __future__ import annotations

from server.api.protocol import Logprobs
from server.core.requests import ChoiceDelta


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
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.out, name).extend(getattr(part, name))
        return part

    def _token_text(self, token_id: int, top: dict) -> str:
        entry = top.get(token_id)
        if entry is not None and entry.decoded_token is not None:
            return entry.decoded_token
        return self.tokenizer.decode([token_id])

    def result(self) -> Logprobs:
        return self.out
