"""`export-bench` writes vLLM's custom-dataset JSONL; checked with vLLM's own loader."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from loadtest.bench import bench_command
from loadtest.cli import main
from loadtest.prompts import PromptBuilder

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "gsm8k_sample.jsonl"


def _export(tmp_path: Path, *extra: str) -> tuple[Path, list[dict]]:
    out = tmp_path / "gsm8k_bench.jsonl"
    assert main(["export-bench", "--data", str(SAMPLE), "--out", str(out), *extra]) == 0
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def test_export_format(tmp_path: Path, capsys) -> None:
    _, lines = _export(tmp_path, "--limit", "5")
    questions = [json.loads(x)["question"] for x in SAMPLE.read_text().splitlines()]
    assert lines == [{"prompt": PromptBuilder()(q)} for q in questions[:5]]
    printed = capsys.readouterr().out
    assert "--dataset-name custom" in printed and "--extra-body" in printed


def test_export_output_tokens_and_suffix(tmp_path: Path) -> None:
    _, lines = _export(tmp_path, "--output-tokens", "64", "--shuffle", "--seed", "42")
    assert len(lines) == 8
    assert all(set(x) == {"prompt", "output_tokens"} and x["output_tokens"] == 64 for x in lines)
    with pytest.raises(ValueError, match="jsonl"):
        main(["export-bench", "--data", str(SAMPLE), "--out", str(tmp_path / "x.json")])


def test_recipe_parses_with_vllm_bench_serve() -> None:
    """The printed command is valid `vllm bench serve` syntax (same parser as our wrapper)."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    argv = shlex.split(bench_command(Path("f.jsonl"), "http://h:1", 8))
    assert argv[:3] == ["thinkscale-vllm", "bench", "serve"]
    args = parser.parse_args(argv[3:])
    assert (args.backend, args.endpoint, args.dataset_name) == (
        "openai",
        "/v1/completions",
        "custom",
    )
    assert args.extra_body == {"method": "baseline"}
    assert args.skip_chat_template and args.disable_shuffle
    assert (args.num_prompts, args.custom_output_len) == (8, 256)


def test_vllm_custom_dataset_reads_the_export(tmp_path: Path) -> None:
    datasets = pytest.importorskip("vllm.benchmarks.datasets.datasets")
    from tests.tiny_model import build_tokenizer

    out, lines = _export(tmp_path, "--limit", "4", "--output-tokens", "12")
    dataset = datasets.CustomDataset(dataset_path=str(out), disable_shuffle=True)
    requests = dataset.sample(
        tokenizer=build_tokenizer(), num_requests=4, output_len=-1, skip_chat_template=True
    )
    assert [r.prompt for r in requests] == [x["prompt"] for x in lines]
    assert [r.expected_output_len for r in requests] == [12] * 4
    assert all(r.prompt_len > 0 for r in requests)
