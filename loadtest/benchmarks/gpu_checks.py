"""Every check that needs a GPU, in one go, so the first GPU lent to the project is used fully.

    python -m loadtest.benchmarks.gpu_checks [--out DIR] [--only kernel,v2,checkpoint,speed,async]

CI machines have no GPU; these checks are the GPU half of the test suite and benchmarks:

* ``kernel``: the fused Triton talk-token mix (kernels/quiet_star/triton_mix.py) on CUDA
  against a float64 torch reference, fresh random inputs per size (including the Mistral and
  Qwen vocabularies), float32 and bfloat16 logits, every output finite; then its time
  against the same mix in torch. Needs torch + triton only.
* ``v2``: Model Runner V2 parity: the V2 processor's unit tests, and the e2e Quiet-STaR suites
  with every test gateway on ``--model-runner v2`` and on v1 (docs/quiet_star.md, "The GPU
  path"). Needs vLLM (GPU build).
* ``checkpoint``: the Quiet-STaR checkpoint oracle e2e tests on the GPU (bf16 where they
  parametrise it). Needs vLLM.
* ``speed``: Quiet-STaR tokens/s, continuation vs per-token engine, concurrency 8 and 64
  (loadtest/benchmarks/quiet_star_bench.py). Needs vLLM and GSM8K (``THINKSCALE_GSM8K_DIR``
  or the hub).
* ``async``: plain baseline tokens/s at concurrency 64 on a gateway whose Quiet-STaR engine is
  the continuation one (vLLM's asynchronous scheduling off) vs the per-token one (on), 3
  alternating rounds: what the continuation engine costs every other method on a GPU
  (docs/architecture.md, "Quiet-STaR engines and asynchronous scheduling"). Needs vLLM.

Prints one summary table last; logs and JSON results go to ``--out``. A check whose needs are
missing is reported SKIPPED with the reason, never as passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = ("kernel", "v2", "checkpoint", "speed", "async")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-checks")))
    parser.add_argument("--only", default=",".join(CHECKS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in args.only.split(","):
        started = time.monotonic()
        try:
            status, detail = globals()[f"check_{name}"](args.out)
        except Exception as exc:  # one broken check must not hide the others' results
            status, detail = "FAILED", f"{type(exc).__name__}: {exc}"
        results[name] = {"status": status, "detail": detail, "s": time.monotonic() - started}
        print(f"[{name}] {status} ({results[name]['s']:.0f} s): {detail}", flush=True)
    payload = {
        "benchmark": "gpu_checks",
        "provenance": {
            "command": "python -m loadtest.benchmarks.gpu_checks " + " ".join(sys.argv[1:]),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain")),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "machine": environment(),
        },
        "checks": results,
    }
    for name in ("kernel",):
        if (args.out / f"{name}.json").is_file():
            payload[f"{name}_rows"] = json.loads((args.out / f"{name}.json").read_text())
    (args.out / "gpu_checks.json").write_text(json.dumps(payload, indent=1))
    print("\ncheck       status   seconds  detail")
    for name, r in results.items():
        print(f"{name:<11} {r['status']:<8} {r['s']:>7.0f}  {r['detail'][:200]}")
    return 1 if any(r["status"] == "FAILED" for r in results.values()) else 0


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def tables(payload: dict) -> dict[str, str]:
    """docs/benchmarks.md's GPU tables (``python -m loadtest docs``)."""
    from loadtest.harness.tables import markdown_table

    checks = [
        [name, c["status"], f"{c['s']:.0f}", c["detail"][:120]]
        for name, c in payload["checks"].items()
    ]
    kernel = [
        [f"{r['rows']} × {r['vocab']}", r["dtype"].removeprefix("torch."), f"{r['rel_err']:.1e}",
         f"{r['fused_ms']:.3f}", f"{r['torch_ms']:.3f}", f"{r['torch_ms'] / r['fused_ms']:.2f}x"]
        for r in payload.get("kernel_rows", [])
    ]  # fmt: skip
    return {
        "gpu_checks": markdown_table(["check", "status", "s", "detail"], checks),
        "gpu_checks.kernel": markdown_table(
            ["rows × vocab", "logits", "rel. error vs float64", "fused ms", "torch ms", "speed-up"],
            kernel,
        ),
    }


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for package in ("triton", "vllm"):
        info[package] = _version(package)
    return info


def _version(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return None
    module = __import__(package)
    return getattr(module, "__version__", "?")


def _needs(*packages: str) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return f"{', '.join(missing)} not installed" if missing else None


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("w") as out:
        done = subprocess.run(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=out
        )
    return done.returncode


# ---- the checks ------------------------------------------------------------------------------


def check_kernel(out: Path) -> tuple[str, str]:
    if (why := _needs("triton")) is not None:
        return "SKIPPED", why
    import torch
    import triton.testing

    sys.path.insert(0, str(REPO))
    from kernels.quiet_star.triton_mix import fused_mix

    def torch_mix(base, post, w, t):  # what tensor_ops computes without the kernel
        return ((1 - w[:, None]) * base + w[:, None] * post.log_softmax(-1)) / t[:, None]

    worst = 0.0
    rows_out = []
    for rows, vocab, dtype in [
        (5, 3000, torch.float32),
        (64, 32002, torch.float32),
        (64, 32002, torch.bfloat16),
        (256, 151936, torch.float32),
    ]:
        gen = torch.Generator(device="cuda").manual_seed(rows * vocab)
        base = torch.randn(rows, vocab, device="cuda", generator=gen).log_softmax(-1).to(dtype)
        post = (torch.randn(rows, vocab, device="cuda", generator=gen) * 3).to(dtype)
        w = torch.rand(rows, device="cuda", generator=gen)
        t = torch.rand(rows, device="cuda", generator=gen) * 2 + 0.1
        ours = fused_mix(base.float(), post.float(), w, t)
        if not torch.isfinite(ours).all():
            return "FAILED", f"non-finite output at rows={rows} vocab={vocab}"
        b64, p64 = base.double(), post.double()
        ref = ((1 - w.double()[:, None]) * b64 + w.double()[:, None] * p64.log_softmax(-1)) / t[
            :, None
        ].double()
        err = ((ours.double() - ref).norm() / ref.norm()).item()
        worst = max(worst, err)
        torch_ms = triton.testing.do_bench(
            lambda b=base, p=post, w=w, t=t: torch_mix(b.float(), p.float(), w, t),
            return_mode="median",
        )
        fused_ms = triton.testing.do_bench(
            lambda b=base, p=post, w=w, t=t: fused_mix(b.float(), p.float(), w, t),
            return_mode="median",
        )
        rows_out.append(
            {"rows": rows, "vocab": vocab, "dtype": str(dtype), "rel_err": err,
             "torch_ms": torch_ms, "fused_ms": fused_ms}
        )  # fmt: skip
    (out / "kernel.json").write_text(json.dumps(rows_out, indent=1))
    timing = ", ".join(
        f"{r['rows']}x{r['vocab']}: fused {r['fused_ms']:.3f} ms vs torch {r['torch_ms']:.3f} ms"
        for r in rows_out
    )
    status = "PASSED" if worst < 1e-5 else "FAILED"
    return status, f"worst relative error {worst:.1e} vs float64; {timing}"


def check_v2(out: Path) -> tuple[str, str]:
    if (why := _needs("vllm")) is not None:
        return "SKIPPED", why
    suites = ["tests/e2e/test_quiet_star.py", "tests/e2e/test_quiet_star_continuation.py"]
    codes = {
        "v2-units": _run(
            [sys.executable, "-m", "pytest", "-q", "tests/unit/test_quiet_star_processor_v2.py"],
            out / "v2_units.log",
        )
    }
    for runner in ("v1", "v2"):
        for engine in ("continuation", "per_token"):
            env = {"THINKSCALE_MODEL_RUNNER": runner, "THINKSCALE_QUIET_STAR_ENGINE": engine}
            log = out / f"e2e_{runner}_{engine}.log"
            codes[f"{runner}/{engine}"] = _run(
                [sys.executable, "-m", "pytest", "-q", "-x", *suites], log, env
            )
    failed = [k for k, code in codes.items() if code != 0]
    return ("FAILED" if failed else "PASSED"), f"exit codes {codes}"


def check_checkpoint(out: Path) -> tuple[str, str]:
    if (why := _needs("vllm")) is not None:
        return "SKIPPED", why
    code = _run(
        [sys.executable, "-m", "pytest", "-q", "tests/e2e/test_quiet_star_checkpoint.py"],
        out / "checkpoint.log",
    )
    return ("PASSED" if code == 0 else "FAILED"), f"pytest exit {code}"


def check_speed(out: Path) -> tuple[str, str]:
    if (why := _needs("vllm")) is not None:
        return "SKIPPED", why
    command = [
        sys.executable, "-m", "loadtest.benchmarks.quiet_star_bench", "speed",
        "--engines", "continuation", "per_token", "--concurrency", "8", "64",
        "--thought-tokens", "4", "--questions", "64", "--max-tokens", "32",
        "--hf-caches", "crop", "--no-plain-bound",
        "--dtype", "bfloat16", "--block-size", "16", "--rounds", "3", "--wait-lock",
        "--out", str(out / "quiet_star_speed_gpu.json"),
    ]  # fmt: skip
    code = _run(command, out / "speed.log")
    return ("PASSED" if code == 0 else "FAILED"), f"quiet_star_bench speed exit {code}"


def check_async(out: Path) -> tuple[str, str]:
    """Baseline throughput with and without vLLM's asynchronous scheduling."""
    if (why := _needs("vllm")) is not None:
        return "SKIPPED", why
    sys.path.insert(0, str(REPO))
    from loadtest.harness.driver import run_bodies
    from loadtest.harness.servers import EngineSettings, start_gateway

    engine = EngineSettings(dtype="bfloat16", block_size=16, max_num_seqs=64)
    bodies = [
        {"prompt": f"Q: What is {i} + {i + 1}? Explain.\nA:", "max_tokens": 256,
         "temperature": 1.0, "ignore_eos": True, "seed": i}
        for i in range(128)
    ]  # fmt: skip
    rates: dict[str, list[float]] = {"continuation": [], "per_token": []}
    for rnd in range(3):
        order = list(rates) if rnd % 2 == 0 else list(reversed(rates))
        for mode in order:
            log = out / f"async_r{rnd}_{mode}.log"
            with start_gateway(engine, log, "--quiet-star-engine", mode) as gw:
                run_bodies(gw.url, bodies[:8], concurrency=8)  # warm
                done = run_bodies(gw.url, bodies, concurrency=64)
                tokens = sum(r.completion_tokens for r in done.results)
                rates[mode].append(tokens / done.wall_s)
    (out / "async_scheduling.json").write_text(json.dumps(rates))
    med = {m: sorted(v)[1] for m, v in rates.items()}
    ratio = med["per_token"] / med["continuation"]
    return "MEASURED", (
        f"baseline tokens/s at concurrency 64, median of 3: async on (per_token) "
        f"{med['per_token']:.0f}, off (continuation) {med['continuation']:.0f}: {ratio:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
