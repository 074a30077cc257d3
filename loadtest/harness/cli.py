"""What every benchmark's command line has, and the frame every benchmark runs in.

``run_benchmark`` takes the measurement lock, turns SIGTERM into a clean exit (servers are
stopped), hands the benchmark a ``save`` callback for partial results, and writes the final
JSON with provenance (``loadtest.harness.results``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.harness.data import DataError, Problem, default_source, load_problems
from loadtest.harness.lock import LockHeld, measurement_lock
from loadtest.harness.provenance import pin_source
from loadtest.harness.results import write_result
from loadtest.harness.rounds import DEFAULT_ROUNDS, run_rounds
from loadtest.harness.servers import EngineSettings, exit_on_sigterm

# The benchmarks' prompt: the paper's zero-shot CoT line, with the newline a step needs.
PROMPT = "Q: {question}\nA: Let's think step by step.\n"

Save = Callable[[dict[str, Any]], None]


def parser(description: str, *, rounds: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="model folder or id (default: embedded SmolLM2)")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--kv-cache-gib", type=int, default=4, help="engine KV cache (GiB)")
    p.add_argument("--dtype", default="float32", help="model dtype ('auto' on a GPU)")
    p.add_argument(
        "--block-size", type=int, default=32, help="KV block size (0: the engine's, 16 on GPU)"
    )
    p.add_argument("--data", default=None, help=f"GSM8K source (default: {default_source()})")
    p.add_argument("--seed", type=int, default=0)
    if rounds:
        p.add_argument(
            "--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds (A B B A ...)"
        )
    p.add_argument("--out", type=Path, required=True, help="result JSON (docs/data/NAME.json)")
    p.add_argument("--logs", type=Path, default=None, help="server logs (default: beside --out)")
    p.add_argument(
        "--wait-lock", action="store_true", help="queue behind another measurement, don't fail"
    )
    return p


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(
        model=args.model,
        served_name=args.served_model_name,
        kv_cache_gib=args.kv_cache_gib,
        dtype=args.dtype,
        block_size=args.block_size or None,
    )


def questions(args: argparse.Namespace, count: int) -> list[tuple[Problem, str]]:
    """The first ``count`` GSM8K test problems, unshuffled, with the benchmark prompt."""
    problems = load_problems(args.data or default_source(), "test", limit=count)
    return [(p, PROMPT.format(question=p.question)) for p in problems]


def logs_dir(args: argparse.Namespace) -> Path:
    return args.logs or args.out.parent / f"{args.out.stem}_logs"


def run_benchmark(
    name: str, args: argparse.Namespace, body: Callable[[Save], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``body(save)`` under the lock; write its payload to ``args.out`` and return it."""
    exit_on_sigterm()
    # The tree as the run starts: the result file and logs it writes are not changes to it.
    pin_source(args.out, logs_dir(args))
    try:
        with measurement_lock(name, wait=args.wait_lock):
            payload = body(lambda partial: write_result(args.out, name, partial, partial=True))
    except (LockHeld, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None
    written = write_result(args.out, name, payload)
    print(f"wrote {args.out}", flush=True)
    return written


def rounds_payload(
    args: argparse.Namespace,
    sides: tuple[str, ...],
    measure: Callable[[int, str], dict[str, Any]],
    summarize: Callable[[list[dict[str, Any]]], Any],
    save: Save,
) -> dict[str, Any]:
    """The usual side-by-side benchmark body: ``measure(round, side)`` in alternating rounds
    (each session saved as it ends), then the settings, engine, summary and sessions."""
    sessions = run_rounds(sides, measure, args.rounds, lambda ss: save({"sessions": ss}))
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "logs")},
        "engine": engine_settings(args).__dict__,
        "summary": summarize(sessions),
        "sessions": sessions,
    }
