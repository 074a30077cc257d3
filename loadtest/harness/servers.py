"""Start and stop the servers a measurement talks to: our gateway, or plain ``vllm serve``.

One launcher for benchmarks and the test fixtures (``tests/conftest.py``): a server runs in a
session of its own, is healthy when ``/health`` answers 200, and is stopped with its whole
process group (vLLM's engine core and workers included). Both kinds get the same engine knobs
from one :class:`EngineSettings`, mirroring ``server/engines/inprocess.py: build_engine_args``.
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

from loadtest.harness.provenance import engine_report, measuring, record_accounting, record_side
from server.app.vllm_cli import COMMAND as VLLM_CLI_COMMAND
from server.core.config import default_cpu_threads_bind
from server.engines.vllm_startup import engine_environment

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EngineSettings:
    """Engine knobs both kinds of server get. None = the gateway's own default
    (``server/core/config.py``); ``model=None`` is the embedded SmolLM2-135M-Instruct."""

    model: str | None = None
    served_name: str | None = None
    max_model_len: int | None = 2048
    kv_cache_gib: int = 4
    dtype: str | None = "float32"
    block_size: int | None = 32
    max_num_seqs: int | None = 64
    seed: int | None = 0

    def model_path(self) -> str:
        """A local folder or hub id for ``vllm serve`` (which has no embedded default)."""
        if self.model is not None:
            return self.model
        from server.core.config import Settings
        from server.engines.embedded_model import ensure_served_embedded_model

        return str(ensure_served_embedded_model(Settings().cache_dir))

    def name(self) -> str:
        if self.served_name:
            return self.served_name
        if self.model is None:
            from server.engines.embedded_model import EMBEDDED_MODEL_NAME

            return EMBEDDED_MODEL_NAME
        return Path(self.model).name

    def flags(self) -> list[str]:
        """Flags both CLIs understand (the gateway mirrors vLLM's names)."""
        out = ["--served-model-name", self.name()]
        for flag, value in (
            ("--max-model-len", self.max_model_len),
            ("--max-num-seqs", self.max_num_seqs),
            ("--dtype", self.dtype),
            ("--block-size", self.block_size),
            ("--seed", self.seed),
        ):
            if value is not None:
                out += [flag, str(value)]
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with`` blocks stop the servers they started (servers
    run in sessions of their own: a plain ``kill`` of the benchmark would orphan them)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@dataclass
class ServerProcess:
    """A running HTTP server: what it is, where it listens, its log, how long it took."""

    kind: str
    url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]
    model_dir: Path | None = None
    started_in_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    # In a benchmark run: the gateway's /metrics once it was idle after its start, so its whole
    # lifetime is one accounting window (checked when it stops).
    accounting_before: dict[str, float] | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the server's process group, SIGKILL if stuck, then SIGKILL to stragglers."""
        self._check_accounting()
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group(signal.SIGKILL)

    def _check_accounting(self) -> None:
        """Close this server's accounting window (see ``accounting_before``), once."""
        before, self.accounting_before = self.accounting_before, None
        if before is None or self.process.poll() is not None:
            return
        from loadtest.harness import accounting

        try:
            result = accounting.check(before, accounting.idle_samples(self.url))
        except Exception as exc:  # never fail a run for its check
            result = {"matches": None, "note": f"cannot scrape /metrics: {exc}"}
        record_accounting(self.kind, result)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_command(engine: EngineSettings, port: int, *extra_args: str) -> list[str]:
    model = ["--model", engine.model] if engine.model is not None else []
    return [
        sys.executable, "-m", "server", *model, "--port", str(port), *engine.flags(),
        "--log-level", "warning", *extra_args,
    ]  # fmt: skip


def vllm_cli() -> str:
    """The ``thinkscale-vllm`` console script of this environment: vLLM's CLI on either build
    (server/app/vllm_cli.py), the command docs/scaling.md tells operators to run replicas with."""
    return str(Path(sys.executable).with_name(VLLM_CLI_COMMAND))


def vllm_serve_command(engine: EngineSettings, port: int, *extra_args: str) -> list[str]:
    """``vllm serve`` with the gateway's engine settings (prefix caching on, as ours)."""
    return [
        vllm_cli(), "serve", engine.model_path(),
        "--port", str(port), *engine.flags(),
        "--enforce-eager", "--enable-prefix-caching", "--max-logprobs", "20",
        "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log", *extra_args,
    ]  # fmt: skip


def start_server(
    kind: str,
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    port: int,
    *,
    timeout: float = 600,
    attempts: int = 1,
) -> ServerProcess:
    """Start ``command``, wait for ``/health`` == 200; ``attempts`` > 1 retries a hung start
    (on a busy 2-core machine an engine start has been seen to stall in worker init)."""
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
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(kind, f"http://127.0.0.1:{port}", process, log_path, command)
    try:
        while time.monotonic() < started + timeout:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited early:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    server.started_in_s = time.monotonic() - started
                    # What its engine runs, as it reports it (every result file says so).
                    record_side(kind, engine_report(server.log()))
                    if kind == "gateway" and measuring():
                        from loadtest.harness.accounting import idle_samples

                        server.accounting_before = idle_samples(server.url)
                    return server
            time.sleep(0.5)
        raise RuntimeError(f"{kind} not healthy in {timeout:g}s:\n{log_path.read_text()[-4000:]}")
    except BaseException:  # a failed start, or Ctrl-C while waiting: never leave it running
        server.stop()
        raise


def start_gateway(
    engine: EngineSettings,
    log_path: Path,
    *extra_args: str,
    port: int | None = None,
    timeout: float = 600,
    attempts: int = 1,
) -> ServerProcess:
    port = port or free_port()
    env = {"THINKSCALE_KV_CACHE_GIB": str(engine.kv_cache_gib), "PYTHONUNBUFFERED": "1"}
    command = gateway_command(engine, port, *extra_args)
    server = start_server(
        "gateway", command, env, log_path, port, timeout=timeout, attempts=attempts
    )
    server.model_dir = Path(engine.model) if engine.model else None
    return server


def start_vllm_serve(
    engine: EngineSettings, log_path: Path, *extra_args: str, port: int | None = None
) -> ServerProcess:
    port = port or free_port()
    env = {
        # The engine core's environment exactly as the gateway's own engine gets it
        # (server/engines/vllm_startup.py): its KV space, the cores the gateway would bind by
        # default (so both sides of a comparison run the model on the same cores), and on GPU
        # the V1 runner that REPLICA_FLAGS' V1-interface processor needs (docs/scaling.md).
        **engine_environment(
            cpu=True,
            kv_cache_gib=engine.kv_cache_gib,
            threads_bind=default_cpu_threads_bind(),
            model_runner="v1",
        ),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        # The console script's own folder heads its sys.path, not the working directory: put
        # this checkout first so the replica runs the code under test (our logits processor),
        # not whatever copy the environment has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    server = start_server(
        "vllm", vllm_serve_command(engine, port, *extra_args), env, log_path, port
    )
    warm_up_replica(server, engine)
    return server


def warm_up_replica(server: ServerProcess, engine: EngineSettings) -> None:
    """`vllm serve` says healthy before its first forward pass; run a prefill and a few decode
    steps before a measurement trusts it (as the gateway's own warm-up does, server/app/warmup.py),
    and fail with what ran (model, dtype, KV size) and how the replica ended."""
    from server.app.dtype_probe import PROBE_PROMPT, describe_exit

    body = {
        "model": engine.name(), "prompt": PROBE_PROMPT, "max_tokens": 4,
        "temperature": 0, "ignore_eos": True,
    }  # fmt: skip
    error = ""
    try:
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)
        if response.status_code != 200 or response.json()["usage"]["completion_tokens"] != 4:
            error = f"HTTP {response.status_code}: {response.text[:300]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if not error and server.process.poll() is None:
        return
    time.sleep(1)  # let a dying replica be reaped
    ended = server.process.poll()
    server.stop()
    status = "still running" if ended is None else f"ended with {describe_exit(ended)}"
    raise RuntimeError(
        f"vllm replica failed its warm-up (model {engine.model_path()}, dtype "
        f"{engine.dtype or 'auto'}, KV cache {engine.kv_cache_gib} GiB): {error or 'no answer'}; "
        f"the replica {status}:\n{server.log()[-3000:]}"
    )


def start(kind: str, engine: EngineSettings, log_path: Path, *extra_args: str) -> ServerProcess:
    """``kind`` is "gateway" or "vllm"."""
    if kind == "gateway":
        return start_gateway(engine, log_path, *extra_args, attempts=2)
    if kind == "vllm":
        return start_vllm_serve(engine, log_path, *extra_args)
    raise ValueError(f"unknown server kind {kind!r}")


# ---- scale-out: `vllm serve` replicas that load our extensions, behind a router ------------------

# What a replica needs to serve every method (docs/scaling.md): our logits processor (the
# `kernels` package importable: installed, or the repository as working directory), cached
# prompt tokens in usage (cache-aware FLOPs), the gateway's logprobs mode, and Quiet-STaR's
# continuation scheduler with the synchronous scheduling its rollback needs (the CPU
# default anyway; the gateway's `--quiet-star-engine continuation`, its CPU default).
REPLICA_FLAGS = (
    "--logits-processors", "kernels.quiet_star.processor:QuietStarLogitsProcessor",
    "--enable-prompt-tokens-details",
    "--logprobs-mode", "raw_logprobs",
    "--scheduler-cls", "kernels.quiet_star.scheduler.QuietStarScheduler",
    "--no-async-scheduling",
)  # fmt: skip

# The pinned router (pyproject.toml, `scale` extra; docs/scaling.md says why vllm-router) and
# how the gateway keys it: consistent hashing on a header, health checks every second, a broken
# replica's circuit re-tried after 5 s so a restarted replica rejoins quickly.
ROUTING_HEADER = "x-session-id"


def router_command(port: int, worker_urls: list[str], *extra_args: str) -> list[str]:
    """vllm-router in front of the replicas: `consistent_hash` on :data:`ROUTING_HEADER`."""
    return [
        str(Path(sys.executable).with_name("vllm-router")),
        "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *worker_urls,
        "--policy", "consistent_hash",
        "--health-check-interval-secs", "1",
        "--health-check-timeout-secs", "5",  # a busy CPU replica still answers, slowly
        "--health-failure-threshold", "2",
        "--health-success-threshold", "1",
        "--cb-timeout-duration-secs", "5",
        "--log-level", "warning",
        # loopback only, and a port of its own (two routers must not collide)
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
        *extra_args,
    ]  # fmt: skip


def start_replica(
    engine: EngineSettings, log_path: Path, *extra_args: str, port: int | None = None
) -> ServerProcess:
    """One `vllm serve` replica with our extensions (:data:`REPLICA_FLAGS`)."""
    return start_vllm_serve(engine, log_path, *REPLICA_FLAGS, *extra_args, port=port)


def start_router(
    worker_urls: list[str], log_path: Path, *extra_args: str, port: int | None = None
) -> ServerProcess:
    """The router, healthy once it answers `/v1/models` (a replica is registered)."""
    port = port or free_port()
    command = router_command(port, worker_urls, *extra_args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ServerProcess("router", f"http://127.0.0.1:{port}", process, log_path, command)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"router exited early:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = httpx.get(f"{server.url}/v1/models", timeout=2)
                if response.status_code == 200 and response.json().get("data"):
                    return server
            time.sleep(0.5)
        raise RuntimeError(f"router not ready in 120s:\n{log_path.read_text()[-4000:]}")
    except BaseException:
        server.stop()
        raise
