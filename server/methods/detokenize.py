"""Incremental detokenization with stop strings, for methods that decode token by token.

Why: vLLM detokenizes inside one engine request, but Quiet-STaR makes one engine request per
output token, so the gateway must turn the growing token list into text deltas itself:
without splitting a multi-byte character (held back while it decodes to U+FFFD) and without
streaming the beginning of a stop string that is about to match (held back as well).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextDelta:
    text: str
    stopped_by: str | None = None  # the stop string that ended the text


class IncrementalText:
    def __init__(self, tokenizer, stops: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in (stops or []) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of the text already sent
        self.stopped_by: str | None = None

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def add(self, token_ids: list[int]) -> TextDelta:
        """Append tokens; return the text that is now safe to send."""
        self.token_ids += token_ids
        text = self.text
        for stop in self.stops:
            position = text.find(stop, max(0, self.emitted - len(stop)))
            if position != -1:
                self.stopped_by = stop
                delta = text[self.emitted : position]
                self.emitted = position
                return TextDelta(delta, stop)
        safe = len(text) - self.hold
        while safe > self.emitted and text[safe - 1] == "\ufffd":
            safe -= 1  # an incomplete multi-byte character: wait for its next byte(s)
        if safe <= self.emitted:
            return TextDelta("")
        delta = text[self.emitted : safe]
        self.emitted = safe
        return TextDelta(delta)

    def flush(self) -> str:
        """The rest of the text, once decoding is over."""
        if self.stopped_by is not None:
            return ""
        text = self.text
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta
