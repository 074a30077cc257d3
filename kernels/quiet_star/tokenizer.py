"""Which tokenizer the engine and the gateway serve with: the `--tokenizer` setting, the
model's own, or a merge of the two built once in the cache.

Why a merge: `ezelikman/quietstar-8-ahead` is published with `added_tokens.json` only (its two
thought tokens at ids 32000 and 32001) and no tokenizer; its evaluation loads Mistral's
tokenizer and adds the thought tokens on top. vLLM needs one tokenizer folder that knows
every id the model can produce, so the gateway builds that folder (the given tokenizer plus
the added tokens at their stated ids) before the engine starts, checks that the ids line up,
and serves with it. Runs in the gateway process only; see docs/quiet_star.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ADDED_TOKENS_FILE = "added_tokens.json"
# Any of these makes a folder a loadable tokenizer (fast, SentencePiece, BPE vocab, Mistral).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tekken.json")
DONE_MARKER = ".thinkscale-merged"


def model_file(model: str, name: str) -> Path | None:
    """`name` in the model's folder or hub repository (cached download), None if absent."""
    local = Path(model)
    if local.is_dir():
        path = local / name
        return path if path.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(
        model,
        name,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        _raise_exceptions_for_gated_repo=False,
    )
    return Path(found) if found else None


def resolve_tokenizer(
    model: str, tokenizer: str | None, cache_dir: Path, *, trust_remote_code: bool = False
) -> str | None:
    """What vLLM's `tokenizer` argument should be (None: the model's own tokenizer).

    A model that ships `added_tokens.json` gets those tokens added to the given tokenizer
    unless it already has them at the stated ids; a model that ships *only* `added_tokens.json`
    cannot start without `--tokenizer`. Raises ValueError with the reason otherwise."""
    added_file = model_file(model, ADDED_TOKENS_FILE)
    if added_file is None:
        return tokenizer
    added = _read_added_tokens(added_file)
    if tokenizer is None:
        if any(model_file(model, name) for name in TOKENIZER_FILES):
            return None  # a complete tokenizer of its own
        raise ValueError(
            f"{model} ships {ADDED_TOKENS_FILE} ({_describe(added)}) but no tokenizer; pass "
            "--tokenizer with the base tokenizer it was trained with (for "
            "ezelikman/quietstar-8-ahead: --tokenizer mistralai/Mistral-7B-v0.1)"
        )
    base = _load(tokenizer, trust_remote_code)
    if all(base.convert_tokens_to_ids(token) == i for token, i in added.items()):
        return tokenizer  # already has them where the model expects them
    config = model_file(model, "config.json")
    model_config = config.read_text() if config is not None else None
    return str(
        merged_tokenizer(
            tokenizer, added, cache_dir, model_config, trust_remote_code=trust_remote_code
        )
    )


def merged_tokenizer(
    tokenizer: str,
    added: dict[str, int],
    cache_dir: Path,
    model_config: str | None = None,
    *,
    trust_remote_code: bool = False,
) -> Path:
    """The folder of `tokenizer` plus `added` (token -> id), built once per distinct input.
    `model_config` (the served model's config.json) is stored with it: vLLM reads a config
    from the tokenizer folder too, and retries with a pause and an error line without one."""
    target = cache_dir / "tokenizers" / f"merged-{_key(tokenizer, added, model_config)}"
    if (target / DONE_MARKER).is_file():
        logger.info("tokenizer: %s + %s (cached at %s)", tokenizer, _describe(added), target)
        return target
    merged = add_tokens(_load(tokenizer, trust_remote_code), added, source=tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".merging-", dir=target.parent))
    try:
        merged.save_pretrained(staging)
        if model_config is not None:
            (staging / "config.json").write_text(model_config)
        (staging / DONE_MARKER).write_text(json.dumps({"tokenizer": tokenizer, "added": added}))
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same merge first
            if not (target / DONE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("tokenizer: %s + %s, merged into %s", tokenizer, _describe(added), target)
    return target


def add_tokens(base, added: dict[str, int], *, source: str):
    """Add `added` to `base` as special tokens in id order, as the reference's evaluation does
    (`add_special_tokens({"additional_special_tokens": [...]})`); each must land on its stated
    id. Raises ValueError naming the first token that does not."""
    new = []
    for token, wanted in sorted(added.items(), key=lambda item: item[1]):
        existing = base.get_vocab().get(token)
        if existing is not None and existing != wanted:
            raise ValueError(
                f"tokenizer {source} has {token} at id {existing}, but the model expects it at "
                f"{wanted}: not the tokenizer the model was trained with"
            )
        if existing is None:
            new.append(token)
    if new:
        base.add_special_tokens({"additional_special_tokens": new})
    for token, wanted in added.items():
        got = base.convert_tokens_to_ids(token)
        if got != wanted:
            raise ValueError(
                f"adding {token} to tokenizer {source} ({len(base) - len(new)} tokens) gives "
                f"it id {got}, but the model expects {wanted}: not the base tokenizer the model "
                "was trained with"
            )
    return base


def _load(tokenizer: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load tokenizer {tokenizer!r}: {exc}") from exc


def _read_added_tokens(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in data.items()
    ):
        raise ValueError(f"{path} must map token strings to integer ids")
    return data


def _describe(added: dict[str, int]) -> str:
    return ", ".join(f"{token}={i}" for token, i in sorted(added.items(), key=lambda x: x[1]))


def _key(tokenizer: str, added: dict[str, int], model_config: str | None) -> str:
    """A hash of everything the merged folder depends on: the tokenizer (for a folder, its
    files' contents), the added tokens, the model's config and the transformers version."""
    import transformers

    digest = hashlib.sha256()
    inputs = [tokenizer, sorted(added.items()), model_config, transformers.__version__]
    digest.update(json.dumps(inputs).encode())
    folder = Path(tokenizer)
    if folder.is_dir():  # the tokenizer files; a model folder's weights by size and time only
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(file.name.encode())
            if stat.st_size <= _HASHED_BYTES:
                digest.update(file.read_bytes())
            else:
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


_HASHED_BYTES = 64 * 1024 * 1024
