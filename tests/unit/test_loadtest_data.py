"""GSM8K loading through `datasets` from the shipped fixture (8 test problems, MIT licensed,
see tests/fixtures/GSM8K_LICENSE); no network and no data outside the repository needed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from loadtest.harness import data
from loadtest.harness.data import DataError, load_problems, load_split, reference_answer, select

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "gsm8k_sample.jsonl"


def _raw() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def test_fixture_is_original_gsm8k_with_its_license() -> None:
    rows = _raw()
    assert len(rows) == 8
    assert all(set(r) == {"question", "answer"} and "####" in r["answer"] for r in rows)
    assert "MIT License" in (SAMPLE.parent / "GSM8K_LICENSE").read_text()


def test_load_file_keeps_order_and_parses_references() -> None:
    problems = load_problems(str(SAMPLE), "test")
    assert [p.id for p in problems] == [f"test-{i}" for i in range(8)]
    assert problems[0].question.startswith("Janet")
    assert problems[0].reference == "18"
    assert [p.reference for p in problems] == [reference_answer(r["answer"]) for r in _raw()]


def test_folder_source_reads_the_split_file(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "test.jsonl")
    lines = SAMPLE.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[5:]) + "\n")
    assert len(load_problems(str(tmp_path), "test")) == 8
    train = load_problems(str(tmp_path), "train")
    assert [p.question for p in train] == [r["question"] for r in _raw()[5:]]
    with pytest.raises(DataError, match=r"no validation\.jsonl"):
        load_split(str(tmp_path), "validation")


def test_shuffle_is_datasets_shuffle_with_the_seed() -> None:
    ds = load_split(str(SAMPLE), "test")
    expected = ds.shuffle(seed=42)["question"][:3]
    problems = load_problems(str(SAMPLE), "test", shuffle=True, seed=42, limit=3)
    assert [p.question for p in problems] == expected
    # the id still names the row of the unshuffled split
    for p in problems:
        assert _raw()[p.index]["question"] == p.question
    again = load_problems(str(SAMPLE), "test", shuffle=True, seed=42, limit=3)
    assert again == problems
    other = load_problems(str(SAMPLE), "test", shuffle=True, seed=7, limit=3)
    assert other != problems


def test_offset_and_limit() -> None:
    problems = load_problems(str(SAMPLE), "test", offset=2, limit=3)
    assert [p.index for p in problems] == [2, 3, 4]
    assert [p.index for p in load_problems(str(SAMPLE), "test", offset=6, limit=5)] == [6, 7]
    assert len(select(load_split(str(SAMPLE), "test"), offset=20)) == 0


def test_reference_answer_normalises() -> None:
    assert reference_answer("so 1000 + 234 = 1,234\n#### 1,234") == "1234"
    assert reference_answer("#### -3") == "-3"
    with pytest.raises(DataError):
        reference_answer("no marker here")


def test_local_path_goes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a local path must not touch the network")

    monkeypatch.setattr(data, "_hub_reachable", no_network)
    load_split(str(SAMPLE), "test")
    import os

    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_local_path_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no such file"):
        load_split("./does/not/exist.jsonl", "test")


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    start = time.monotonic()
    with pytest.raises(DataError, match="--data PATH"):
        load_split("openai/gsm8k", "test")
    assert time.monotonic() - start < 10
