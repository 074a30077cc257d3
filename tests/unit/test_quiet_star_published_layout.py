"""The published Quiet-STaR layout (only `added_tokens.json` of the tokenizer files) and the
start-up checks: the merged tokenizer, and every refusal that keeps a checkpoint from being
served silently as some other model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernels.quiet_star import checkpoint
from kernels.quiet_star.checkpoint_setup import model_setup, resolve_checkpoint
from kernels.quiet_star.tokenizer import DONE_MARKER, resolve_tokenizer
from server.core.config import Settings, resolve_hardware_defaults
from tests.quiet_star_checkpoint import (
    END,
    MISTRAL_DASHES_ID,
    MISTRAL_VOCAB,
    QUIET_STAR_KEYS,
    START,
    build_mistral_tokenizer,
    build_published_checkpoint,
    build_quiet_star_checkpoint,
)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return build_published_checkpoint(tmp_path_factory.mktemp("quietstar-8-ahead"))


@pytest.fixture(scope="module")
def mistral(tmp_path_factory) -> Path:
    return build_mistral_tokenizer(tmp_path_factory.mktemp("mistral"))


def test_the_fixture_has_the_published_layout(published) -> None:
    files = {p.name for p in published.iterdir()}
    assert "added_tokens.json" in files
    assert not {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} & files
    assert len([f for f in files if f.endswith(".safetensors")]) == 3
    assert (published / "added_tokens.json").stat().st_size == 59  # as published
    index = json.loads((published / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    config = json.loads((published / "config.json").read_text())
    assert config["vocab_size"] == 32002 and config["torch_dtype"] == "bfloat16"
    assert checkpoint.is_quiet_star_config(config)


def test_a_start_without_tokenizer_is_refused(published, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"added_tokens\.json.*--tokenizer"):
        resolve_tokenizer(str(published), None, tmp_path)


def test_the_merged_tokenizer_is_the_eval_scripts_and_is_built_once(
    published, mistral, tmp_path
) -> None:
    from transformers import AutoTokenizer

    folder = Path(resolve_tokenizer(str(published), str(mistral), tmp_path))
    assert folder.parent == tmp_path / "tokenizers"
    merged = AutoTokenizer.from_pretrained(folder)
    assert len(merged) == 32002 and merged.vocab_size == MISTRAL_VOCAB
    assert merged.convert_tokens_to_ids([START, END]) == [32000, 32001]
    assert merged.encode("---", add_special_tokens=False) == [MISTRAL_DASHES_ID]
    # as the reference's eval builds it: Mistral's tokenizer, the thought tokens added
    reference = AutoTokenizer.from_pretrained(mistral)
    reference.add_special_tokens({"additional_special_tokens": [START, END]})
    text = "Q: 12 / 60 = 0.2; <|startthought|> --- <|endthought|>\nA:"
    assert merged.encode(text) == reference.encode(text)
    assert merged.decode([1, 1186, 32000, 32001, 28747], skip_special_tokens=True) == "Q:"
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 32002
    built = (folder / DONE_MARKER).stat().st_mtime_ns
    assert resolve_tokenizer(str(published), str(mistral), tmp_path) == str(folder)
    assert (folder / DONE_MARKER).stat().st_mtime_ns == built  # not rebuilt


def test_added_tokens_at_other_ids_are_refused(published, mistral, tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for file in published.iterdir():
        (model / file.name).symlink_to(file)
    (model / "added_tokens.json").unlink()
    (model / "added_tokens.json").write_text(json.dumps({START: 32001, END: 32002}))
    with pytest.raises(ValueError, match=r"<\|startthought\|>.*id 32000.*expects 32001"):
        resolve_tokenizer(str(model), str(mistral), tmp_path / "cache")


def test_a_tokenizer_that_has_the_tokens_elsewhere_is_refused(published, tmp_path) -> None:
    tiny = build_quiet_star_checkpoint(tmp_path / "tiny")  # thought tokens at 90 and 91
    with pytest.raises(ValueError, match=r"at id 90, but the model expects it at 32000"):
        resolve_tokenizer(str(published), str(tiny), tmp_path / "cache")


def test_the_setup_resolves_every_value_and_passes_the_dashes_id(
    published, mistral, tmp_path
) -> None:
    settings = Settings(model=str(published), tokenizer=str(mistral), cache_dir=tmp_path)
    setup = model_setup(settings, str(published))
    assert setup.tokenizer is not None and setup.tokenizer.startswith(str(tmp_path))
    assert setup.hf_overrides == {
        "architectures": [checkpoint.ARCHITECTURE],
        checkpoint.KEY_THOUGHT_EMBEDDINGS: "eval",
        checkpoint.KEY_INIT_TOKEN_ID: MISTRAL_DASHES_ID,
    }
    resolved = setup.quiet_star
    assert resolved is not None
    assert (resolved["thought_tokens"], resolved["n_ahead"]) == (5, 8)
    assert (resolved["start_token_id"], resolved["end_token_id"]) == (32000, 32001)
    assert resolved["init_token_id"] == MISTRAL_DASHES_ID
    assert resolved["mixing_weight_source"] == "head"


def test_the_engine_gets_the_merged_tokenizer(published, mistral, tmp_path, monkeypatch) -> None:
    from server.engines.inprocess import build_engine_args

    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_USE_V2_MODEL_RUNNER"):
        monkeypatch.setenv(name, "")  # build_engine_args exports them; restored afterwards
    settings = resolve_hardware_defaults(
        Settings(model=str(published), tokenizer=str(mistral), cache_dir=tmp_path)
    )
    args = build_engine_args(settings, str(published))
    assert args.tokenizer == model_setup(settings, str(published)).tokenizer
    assert args.hf_overrides[checkpoint.KEY_INIT_TOKEN_ID] == MISTRAL_DASHES_ID


# -- the checks against the tokenizer, on fake tokenizers ---------------------------------------


class FakeTokenizer:
    """Only what resolve_checkpoint reads: the vocabulary, its base size, and encode."""

    def __init__(self, vocab: dict[str, int], base: int, dashes: list[int]) -> None:
        self.vocab, self.vocab_size, self.dashes = vocab, base, dashes

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert text == "---" and not add_special_tokens
        return self.dashes


CONFIG = {**QUIET_STAR_KEYS, "vocab_size": 32002}
GOOD = {START: 32000, END: 32001}


def test_the_fake_setup_resolves() -> None:
    resolved = resolve_checkpoint(CONFIG, FakeTokenizer(GOOD, 32000, [11940]), "eval")
    assert resolved["init_token_id"] == 11940


@pytest.mark.parametrize(
    ("vocab", "base", "dashes", "embeddings", "message"),
    [
        ({START: 32000}, 32000, [11940], "eval", r"has no <\|endthought\|>"),
        ({}, 32000, [11940], "eval", r"has no <\|startthought\|>"),
        ({START: 32001, END: 32000}, 32000, [11940], "eval", r"id 32001 .* puts it at 32000"),
        (GOOD, 32002, [11940], "eval", r"base vocabulary \(32002 tokens\) includes"),
        (GOOD, 32000, [387, 387], "eval", r"'---' encodes to \[387, 387\]"),
        (GOOD, 32000, [32000], "eval", r"'---' encodes to \[32000\]"),
    ],
)
def test_a_tokenizer_that_does_not_fit_is_refused(vocab, base, dashes, embeddings, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_checkpoint(CONFIG, FakeTokenizer(vocab, base, dashes), embeddings)


def test_the_dashes_only_matter_for_the_eval_embeddings() -> None:
    resolved = resolve_checkpoint(CONFIG, FakeTokenizer(GOOD, 32000, [387, 387]), "trained")
    assert resolved["init_token_id"] is None and resolved["thought_embeddings"] == "trained"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"max_thoughts": 5}, r"max_thoughts=5 gives n_ahead=3, i.e. 0 sampled"),
        ({"max_thoughts": 3}, r"max_thoughts=3 gives n_ahead=1"),
        ({"n_ahead_talk": 4}, r"n_ahead_talk=4"),
        ({"n_ahead": 12}, r"gives n_ahead=8 .* says n_ahead=12"),
        ({"max_thoughts": "ten"}, r"max_thoughts='ten' is not an integer"),
    ],
)
def test_a_config_without_a_valid_thought_length_is_refused(keys, message) -> None:
    config = {**CONFIG, **keys}
    with pytest.raises(ValueError, match=message):
        resolve_checkpoint(config, FakeTokenizer(GOOD, 32000, [11940]), "eval")
    with pytest.raises(ValueError, match=message):
        checkpoint.hf_overrides(config, "eval")


def test_the_resolved_values_are_logged_once(published, mistral, tmp_path, caplog) -> None:
    settings = Settings(model=str(published), tokenizer=str(mistral), cache_dir=tmp_path / "c")
    with caplog.at_level("INFO", logger="kernels.quiet_star.checkpoint_setup"):
        model_setup(settings, str(published))
        model_setup(settings, str(published))  # before and while the engine starts
    lines = [r.getMessage() for r in caplog.records if "Quiet-STaR checkpoint" in r.getMessage()]
    assert len(lines) == 1
    assert '"thought_tokens": 5' in lines[0] and '"init_token_id": 11940' in lines[0]
