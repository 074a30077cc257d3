"""How every vLLM engine of ours is started: the environment its engine-core process reads, and
the AsyncLLM start-up itself.

Why one module: vLLM's engine core is a separate process that reads its CPU KV-cache size, its
thread binding and its model runner from environment variables when it is spawned. The policy
engine, the PRM engine and the `vllm serve` replicas the benchmarks and tests start must all set
them the same way, or two sides of a comparison run different engines (docs/architecture.md,
"Engines").
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from server.core.config import omp_threads_bind_value


def engine_environment(
    *,
    cpu: bool,
    kv_cache_gib: int | None = None,
    threads_bind: str | None = None,
    model_runner: str | None = None,
) -> dict[str, str]:
    """The variables an engine-core process must see.

    On a CPU: the KV-cache space (without it vLLM reserves most of the machine's RAM for KV) and
    the cores its model threads bind to (`threads_bind` as `--cpu-threads-bind` takes it;
    `auto` leaves vLLM's default). On a GPU: the model runner (vLLM defaults to Model Runner
    V2, which refuses V1-interface logits processors: pin the one the processor is written for).
    """
    env: dict[str, str] = {}
    if cpu:
        if kv_cache_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        bind = omp_threads_bind_value(threads_bind or "auto")
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    if model_runner is not None:
        env["VLLM_USE_V2_MODEL_RUNNER"] = "1" if model_runner == "v2" else "0"
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set `env` while an engine starts, then restore what was there: the variables are read
    when the engine-core process is spawned, so each engine of the process gets its own."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_async_llm(args: Any, env: Mapping[str, str], **kwargs: Any) -> Any:
    """Start an AsyncLLM from engine args with `env` set for its engine core (blocking)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    with environment(env):
        return AsyncLLM.from_engine_args(args, **kwargs)
