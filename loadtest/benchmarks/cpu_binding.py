"""Which cores the engine's model threads use on a CPU: vLLM's ``auto`` vs ``all``.

vLLM's CPU backend binds the model worker's threads to every core but one, which it keeps for
its scheduler process (that process busy-waits on the worker). On a machine with few cores the
kept core is a large share, and the gateway's default (``--cpu-threads-bind``,
server/core/config.py) gives the worker every core on machines with 4 or fewer. This benchmark
is the evidence: the same gateway with ``--cpu-threads-bind auto`` and ``all``, alternating A B
B A, each session running plain decoding and Quiet-STaR (continuation engine, one-token
delimiters, t = 4) at concurrency 1 and 8 on the same prompt and seeds. Output tokens per second
of the session, and ``all / auto``.

    python -m loadtest.benchmarks.cpu_binding --out docs/data/cpu_binding.json
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtest.harness import cli
from loadtest.harness.driver import run_bodies
from loadtest.harness.results import compare_sides
from loadtest.harness.servers import start_gateway
from loadtest.harness.tables import two_side_table

NAME = "cpu_binding"
SIDES = ("auto", "all")
QUIET_STAR = {
    "thought_tokens": 4,
    "mixing_weight": 0.1,
    "start_token": "<|im_start|>",  # one token each in SmolLM2: t + 3 steps per output token
    "end_token": "<|im_end|>",
}
WORKLOADS = (  # key, label, method block, concurrency
    ("baseline_c1", "baseline, concurrency 1", {"method": "baseline"}, 1),
    ("baseline_c8", "baseline, concurrency 8", {"method": "baseline"}, 8),
    ("quiet_star_c1", "quiet_star t=4, concurrency 1", {"method": "quiet_star"}, 1),
    ("quiet_star_c8", "quiet_star t=4, concurrency 8", {"method": "quiet_star"}, 8),
)
METRICS = tuple((key, label, 2) for key, label, _, _ in WORKLOADS)


def bodies(args: argparse.Namespace, model: str, method: dict, concurrency: int) -> list[dict]:
    """``concurrency`` requests at once, each its own seed; EOS ignored so every side decodes
    exactly the same number of tokens."""
    (_, prompt), *_ = cli.questions(args, 1)
    quiet = method["method"] == "quiet_star"
    tokens = args.quiet_star_tokens if quiet else args.baseline_tokens
    extra = {"quiet_star": QUIET_STAR} if quiet else {}
    return [
        {"model": model, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
         "temperature": 1.0, "seed": args.seed + i, **method, **extra}
        for i in range(concurrency)
    ]  # fmt: skip


def measure(args: argparse.Namespace, rnd: int, side: str) -> dict[str, Any]:
    engine = cli.engine_settings(args)
    log = cli.logs_dir(args) / f"r{rnd}-{side}.log"
    session: dict[str, Any] = {"side": side, "round": rnd}
    with start_gateway(engine, log, "--cpu-threads-bind", side, attempts=2) as gateway:
        warm = {"model": engine.name(), "prompt": "Warm-up.", "max_tokens": 8}
        run_bodies(gateway.url, [warm], concurrency=1)
        for key, _, method, concurrency in WORKLOADS:
            load = bodies(args, engine.name(), method, concurrency)
            done = run_bodies(gateway.url, load, concurrency=concurrency)
            tokens = sum(r.completion_tokens for r in done.results)
            session[key] = tokens / done.wall_s
    return session


def summary(sessions: list[dict]) -> dict[str, Any]:
    return {
        key: compare_sides([(s["side"], s[key]) for s in sessions], *SIDES) for key, _, _ in METRICS
    }


def tables(payload: dict[str, Any]) -> dict[str, str]:
    columns = (("auto", "auto (vLLM)"), ("all", "all cores"))
    return {NAME: two_side_table("output tokens/s", METRICS, payload["summary"], columns)}


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--baseline-tokens", type=int, default=64)
    p.add_argument("--quiet-star-tokens", type=int, default=16)
    args = p.parse_args(argv)

    def body(save: cli.Save) -> dict[str, Any]:
        return cli.rounds_payload(
            args, SIDES, lambda r, side: measure(args, r, side), summary, save
        )

    payload = cli.run_benchmark(NAME, args, body)
    print("\n\n".join(tables(payload).values()))


if __name__ == "__main__":
    main()
