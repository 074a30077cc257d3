"""Shared fixtures: the tiny random Llama, and one real gateway (uvicorn + vLLM) per session.

Why one gateway per session: the engine takes ~20 s to start on two CPU cores; every
end-to-end test talks to the same process over real HTTP, as a client would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.tiny_model import build_tiny_llama

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    """A running `python -m server` process."""

    url: str
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(
    model_dir: Path, log_path: Path, *extra_args: str, timeout: float = 600
) -> Gateway:
    """Start the gateway on a free port and wait until /health says ok."""
    port = free_port()
    env = {**os.environ, "THINKSCALE_KV_CACHE_GIB": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "server",
        "--model", str(model_dir),
        "--served-model-name", "tiny",
        "--port", str(port),
        "--max-model-len", "1024",
        "--log-level", "warning",
        *extra_args,
    ]  # fmt: skip
    log = log_path.open("w")
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{log_path.read_text()[-5000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Gateway(url, model_dir, process, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"gateway not healthy in {timeout}s:\n{log_path.read_text()[-5000:]}")


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gateway.process.kill()


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
