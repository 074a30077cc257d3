"""GSM8K problems through `datasets`: local JSONL files offline, the hub id when reachable.

Why `datasets` for local files too: the paper's protocol is "the test split shuffled with seed 42
through `datasets`", and `Dataset.shuffle(seed=...)` must give the same order here as there, so
both sources end up as a `datasets.Dataset` before any shuffling or slicing.

Why the network probe: `load_dataset("openai/gsm8k")` on a machine without network retries for
minutes before failing. A short HTTP probe turns that into an immediate, clear error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.core.answers import normalize_number

if TYPE_CHECKING:
    from datasets import Dataset

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
# A local folder of the original GSM8K files (MIT licensed) for offline machines; unset = hub.
LOCAL_ENV = "THINKSCALE_GSM8K_DIR"
_HASH_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


class DataError(RuntimeError):
    """The data source cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class Problem:
    """One GSM8K question. `index` is its row in the unshuffled split, so ids are stable."""

    id: str
    index: int
    question: str
    answer: str  # the full worked solution, ending in "#### N"
    reference: str  # the normalised number after "####"


def default_source() -> str:
    """The folder `$THINKSCALE_GSM8K_DIR` names (offline machines), else the hub id."""
    return os.environ.get(LOCAL_ENV) or HUB_ID


def reference_answer(answer: str) -> str:
    """The number after "####" in a GSM8K solution, normalised ("1,000" -> "1000")."""
    m = _HASH_ANSWER.search(answer)
    if m is None:
        raise DataError(f"GSM8K answer without '#### N': {answer[-80:]!r}")
    value = normalize_number(m.group(1))
    if value is None:
        raise DataError(f"GSM8K reference is not a number: {m.group(1)!r}")
    return value


def _local_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    for name in (f"{split}.jsonl", f"{split}.json"):
        if (path / name).is_file():
            return path / name
    raise DataError(f"no {split}.jsonl in {path}")


def _go_offline() -> None:
    """Local files need no network: make sure `datasets` and the hub client don't try."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    # If `datasets` was imported before the variables were set, its config already read them.
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None if the hub answers, else why not (one short request, never a minutes-long hang)."""
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(f"{endpoint}/api/datasets/{HUB_ID}", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def load_split(source: str, split: str) -> Dataset:
    """One split as a `datasets.Dataset` with columns question, answer (original order).

    `source` is a local JSONL file (used whatever the split), a folder holding `{split}.jsonl`,
    or a hub id (`openai/gsm8k`, config `main`).
    """
    path = Path(source).expanduser()
    if path.exists():
        _go_offline()
        from datasets import load_dataset

        file = _local_file(path, split)
        return load_dataset("json", data_files={split: str(file)}, split=split)
    if source.startswith((".", "/", "~")) or source.endswith((".json", ".jsonl")):
        raise DataError(f"--data {source!r}: no such file or folder")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE")
    if not offline and (why := _hub_reachable()) is not None:
        raise DataError(
            f"cannot reach the Hugging Face hub for {source!r} ({why}). "
            "Pass --data PATH to local GSM8K JSONL files (original format: "
            '{"question": ..., "answer": "... #### N"}), e.g. --data path/to/gsm8k'
        )
    from datasets import load_dataset

    try:
        return load_dataset(source, HUB_CONFIG, split=split)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        raise DataError(f"loading {source!r} split {split!r} failed: {exc}") from exc


def select(
    ds: Dataset,
    *,
    limit: int | None = None,
    offset: int = 0,
    shuffle: bool = False,
    seed: int = 0,
) -> Dataset:
    """Optionally `Dataset.shuffle(seed=...)`, then take rows [offset, offset + limit).

    An `index` column keeps each row's position in the unshuffled split.
    """
    if "index" not in ds.column_names:
        ds = ds.add_column("index", list(range(len(ds))))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    start = min(offset, len(ds))
    stop = len(ds) if limit is None else min(len(ds), offset + limit)
    # `datasets` rejects an empty range that starts past the end; an empty list is fine.
    return ds.select(range(start, stop) if stop > start else [])


def to_problems(ds: Dataset, split: str) -> list[Problem]:
    """Rows as :class:`Problem` objects; ids are "<split>-<row in the original split>"."""
    return [
        Problem(
            id=f"{split}-{row['index']}",
            index=int(row["index"]),
            question=row["question"],
            answer=row["answer"],
            reference=reference_answer(row["answer"]),
        )
        for row in ds
    ]


def load_problems(
    source: str | None = None,
    split: str = "test",
    *,
    limit: int | None = None,
    offset: int = 0,
    shuffle: bool = False,
    seed: int = 0,
) -> list[Problem]:
    """The problems a run replays: load, shuffle/slice, parse references."""
    source = source or default_source()
    ds = select(load_split(source, split), limit=limit, offset=offset, shuffle=shuffle, seed=seed)
    return to_problems(ds, split)
