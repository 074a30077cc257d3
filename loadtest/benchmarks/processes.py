"""Start and stop the servers a benchmark compares: our gateway, or plain ``vllm serve``.

Why here and not the test fixture: benchmarks run the real SmolLM2 with benchmark-grade
settings (4 GiB KV cache, 2048-token context) and restart servers between rounds; they must
also mirror the gateway's engine settings exactly when they start ``vllm serve`` (see
``server/engine.py: build_engine_args``), so both sides are spelled out in one place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "/tmp/thinkscale-models/SmolLM2-135M-Instruct"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class EngineSettings:
    """The engine knobs both servers get; the gateway's CPU defaults (server/config.py)."""

    model: str = DEFAULT_MODEL
    served_name: str = DEFAULT_NAME
    max_model_len: int = 2048
    kv_cache_gib: int = 4
    dtype: str = "float32"
    block_size: int = 32
    max_num_seqs: int = 64
    seed: int = 0


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with`` blocks stop the servers they started.

    Servers run in sessions of their own (see ``ServerProcess.stop``): without this, stopping
    a benchmark with ``kill`` would leave its gateway and engine running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running HTTP server: what it is, where it listens, and its log."""

    kind: str
    url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]
    started_in_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the server's own process group, SIGKILL if stuck.

        The server runs in a session of its own (``start_new_session``), so the group holds
        exactly it and its children: vLLM's engine core and worker processes, which would
        otherwise outlive a server that is killed while the engine is still starting."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group(signal.SIGKILL)  # stragglers of a server that already exited

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_command(engine: EngineSettings, port: int, *extra_args: str) -> list[str]:
    return [
        sys.executable, "-m", "server",
        "--model", engine.model,
        "--served-model-name", engine.served_name,
        "--port", str(port),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--dtype", engine.dtype,
        "--block-size", str(engine.block_size),
        "--seed", str(engine.seed),
        "--log-level", "warning",
        *extra_args,
    ]  # fmt: skip


def vllm_serve_command(engine: EngineSettings, port: int) -> list[str]:
    """``vllm serve`` with the gateway's engine settings (prefix caching is vLLM's default)."""
    return [
        sys.executable, "-m", "loadtest.benchmarks.vllm_cli", "serve", engine.model,
        "--served-model-name", engine.served_name,
        "--port", str(port),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--dtype", engine.dtype,
        "--block-size", str(engine.block_size),
        "--seed", str(engine.seed),
        "--enforce-eager",
        "--enable-prefix-caching",
        "--max-logprobs", "20",
        "--uvicorn-log-level", "warning",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip


def start_server(
    kind: str,
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    port: int,
    timeout: float = 240,
    attempts: int = 2,
) -> ServerProcess:
    """Start ``command`` and wait until ``/health`` answers 200; one retry if it hangs.

    Why a retry: on the shared 2-core machine an engine start has been seen to stall for
    minutes in worker initialisation while other engines started; a second attempt has not."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(kind, command, env, log_path, port, timeout)
        except RuntimeError as exc:
            if attempt == attempts:
                raise
            print(f"{kind}: start attempt {attempt} failed, retrying: {str(exc)[:200]}", flush=True)
    raise AssertionError("unreachable")


def _start_once(
    kind: str, command: list[str], env: dict[str, str], log_path: Path, port: int, timeout: float
) -> ServerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ServerProcess(kind, f"http://127.0.0.1:{port}", process, log_path, command)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited early:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                server.started_in_s = time.monotonic() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{kind} not healthy in {timeout}s:\n{log_path.read_text()[-4000:]}")


def start_gateway(
    engine: EngineSettings, log_path: Path, *extra_args: str, port: int | None = None
) -> ServerProcess:
    port = port or free_port()
    env = {"THINKSCALE_KV_CACHE_GIB": str(engine.kv_cache_gib), "PYTHONUNBUFFERED": "1"}
    return start_server("gateway", gateway_command(engine, port, *extra_args), env, log_path, port)


def start_vllm_serve(engine: EngineSettings, log_path: Path, port: int | None = None):
    port = port or free_port()
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(engine.kv_cache_gib),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return start_server("vllm", vllm_serve_command(engine, port), env, log_path, port)


def scrape_metrics(url: str) -> dict[str, float]:
    """All samples of ``/metrics`` as ``{"name{labels}": value}``."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def metric_total(samples: dict[str, float], name: str) -> float:
    """Sum of every labelled sample of one metric (e.g. ``vllm:prompt_tokens_total``)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))
