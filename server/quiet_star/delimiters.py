"""Which tokens open and close a thought for the served model.

A Quiet-STaR checkpoint (`ezelikman/quietstar-8-ahead`) has `<|startthought|>` and
`<|endthought|>` in its vocabulary: one token each, exactly as it was trained. Other models
(the embedded SmolLM2) were never trained to think; any string works, tokenized to a short
forced sequence, and the mixing weight keeps the output anchored to the base distribution.
"""

from __future__ import annotations

from server.core.errors import APIError

CHECKPOINT_START, CHECKPOINT_END = "<|startthought|>", "<|endthought|>"
FALLBACK_START, FALLBACK_END = "<think>", "</think>"
MAX_DELIMITER_TOKENS = 4


def token_ids_for(tokenizer, text: str, *, param: str) -> tuple[int, ...]:
    """A special token's id if `text` is one, else the string's tokens (at most a few)."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return (vocab[text],)
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise APIError(f"'{param}' tokenizes to nothing", param=param)
    if len(ids) > MAX_DELIMITER_TOKENS:
        raise APIError(
            f"'{param}' is {len(ids)} tokens; use at most {MAX_DELIMITER_TOKENS}", param=param
        )
    return ids


def resolve_delimiters(
    tokenizer, start: str | None, end: str | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Start and end token ids: the request's strings, else the checkpoint's, else a fallback."""
    vocab = tokenizer.get_vocab()
    has_checkpoint_tokens = CHECKPOINT_START in vocab and CHECKPOINT_END in vocab
    default_start = CHECKPOINT_START if has_checkpoint_tokens else FALLBACK_START
    default_end = CHECKPOINT_END if has_checkpoint_tokens else FALLBACK_END
    return (
        token_ids_for(tokenizer, start or default_start, param="quiet_star.start_token"),
        token_ids_for(tokenizer, end or default_end, param="quiet_star.end_token"),
    )
