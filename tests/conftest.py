"""Shared fixtures: the tiny random Llama, and one real gateway (uvicorn + vLLM) per session.

Why one gateway per session: the engine takes ~20 s to start on two CPU cores; every
end-to-end test talks to the same process over real HTTP, as a client would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from loadtest.harness import servers
from loadtest.harness.servers import REPO, EngineSettings, ServerProcess, free_port
from tests.tiny_model import build_tiny_llama

__all__ = [
    "REPO",
    "Gateway",
    "free_port",
    "http_client",
    "running_gateway",
    "scrape_metrics",
    "start_gateway",
    "stop_gateway",
]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Where the suite ran and which dtypes it tests, at the top of every run (CI's too): the
    CPU decides which kernels vLLM takes, and bf16 crashed on one kind of CPU only."""
    from server.app.dtype_probe import cpu_model
    from server.core.config import cpu_flags, has_native_bf16

    flags = " ".join(f"{name}={'yes' if on else 'no'}" for name, on in cpu_flags().items())
    return [
        f"cpu: {cpu_model()} ({len(os.sched_getaffinity(0))} cores usable); {flags}",
        f"dtypes: the shared test gateway runs {TEST_DTYPE}; tests/e2e/test_startup.py runs "
        f"bfloat16 on purpose and the default dtype policy (native bf16: {has_native_bf16()})",
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# One launcher for tests and benchmarks (loadtest/harness/servers.py); the test gateway keeps
# the gateway's hardware defaults except the dtype, pinned to float32 so every CPU runs the same
# numerics (bfloat16 is tested on purpose in tests/e2e/test_dtype.py), and a smaller KV cache
# and context.
TEST_DTYPE = "float32"
Gateway = ServerProcess


def start_gateway(
    model_dir: Path, log_path: Path, *extra_args: str, timeout: float = 600
) -> Gateway:
    """Start the gateway on a free port and wait until /health says ok."""
    engine = EngineSettings(
        model=str(model_dir),
        served_name="tiny",
        max_model_len=1024,
        kv_cache_gib=1,
        dtype=TEST_DTYPE,
        block_size=None,
        max_num_seqs=None,
        seed=None,
    )
    return servers.start_gateway(engine, log_path, *extra_args, timeout=timeout)


def stop_gateway(gateway: Gateway) -> None:
    gateway.stop()


@contextmanager
def running_gateway(model_dir: Path, log_path: Path, *extra_args: str) -> Iterator[Gateway]:
    """A gateway of a test module's own (other flags than the session one), always stopped."""
    gw = start_gateway(model_dir, log_path, *extra_args)
    try:
        yield gw
    finally:
        stop_gateway(gw)


@contextmanager
def http_client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=300) as c:
        yield c


def completion_ok(http: httpx.Client, body: dict) -> dict:
    """POST a completion that must succeed; its JSON (the error's text when it did not)."""
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def scrape_metrics(http: httpx.Client) -> dict[str, float]:
    """Every sample of the gateway's /metrics, keyed by name and labels as exported."""
    samples: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="session")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gw = start_gateway(tiny_model_dir, log_path)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def client(gateway: Gateway):
    """The official openai client, pointed at our gateway."""
    from openai import OpenAI

    return OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=300) as c:
        yield c
