"""GSM8K prompts as a `vllm bench serve` custom dataset (`--dataset-name custom`).

vLLM 0.32's `CustomDataset` (vllm/benchmarks/datasets/datasets.py) reads a `.jsonl` file whose
lines are objects with a "prompt" string and, optionally, an integer "output_tokens" (used
only when `--custom-output-len -1`). It wraps each prompt in the tokenizer's chat template
unless `--skip-chat-template` is given, and shuffles unless `--disable-shuffle` is given. The
prompts written here are already the final completion prompts, so the recipe passes both flags
(see docs/loadtest.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from loadtest.harness.data import Problem
from server.app.vllm_cli import COMMAND as VLLM_CLI_COMMAND


def bench_lines(
    problems: Sequence[Problem],
    build_prompt: Callable[[str], str],
    output_tokens: int | None = None,
) -> list[dict[str, object]]:
    """One custom-dataset object per problem."""
    lines: list[dict[str, object]] = []
    for p in problems:
        line: dict[str, object] = {"prompt": build_prompt(p.question)}
        if output_tokens is not None:
            line["output_tokens"] = output_tokens
        lines.append(line)
    return lines


def write_bench_dataset(
    path: Path,
    problems: Sequence[Problem],
    build_prompt: Callable[[str], str],
    output_tokens: int | None = None,
) -> int:
    """Write the JSONL file (the name must end in .jsonl for vLLM); return the line count."""
    if path.suffix != ".jsonl":
        raise ValueError("vllm bench's custom dataset only reads files ending in .jsonl")
    lines = bench_lines(problems, build_prompt, output_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return len(lines)


def bench_command(path: Path, url: str, count: int, method: str = "baseline") -> str:
    """The `vllm bench serve` command line that replays the file against the gateway, spelled
    with `thinkscale-vllm` (vLLM's CLI on either build: server/app/vllm_cli.py)."""
    extra = json.dumps({"method": method})
    return (
        f"{VLLM_CLI_COMMAND} bench serve --backend openai "
        f"--base-url {url} --endpoint /v1/completions "
        "--model MODEL_NAME --tokenizer TOKENIZER_PATH "
        f"--dataset-name custom --dataset-path {path} "
        "--skip-chat-template --disable-shuffle --custom-output-len 256 "
        f"--num-prompts {count} --max-concurrency 8 "
        f"--extra-body '{extra}' --temperature 0"
    )
