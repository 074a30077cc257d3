"""What the remote hop costs per method: the gateway on its in-process engine vs the same gateway
driving one `vllm serve` replica through the router (docs/scaling.md), same engine settings.

Sides, alternating: ``inprocess`` (the default gateway) and ``remote`` (one replica with our
logits processor and continuation scheduler + vllm-router + the gateway with ``--engine-url``),
optionally ``remote_per_token`` (the same replica and router, the gateway with
``--quiet-star-engine per_token``: one call per Quiet-STaR output token, as replicas ran before
they ran the continuation scheduler). One replica on purpose:
the hop (HTTP + SSE per engine call, the router, JSON) is isolated from any gain of a second
replica. Each session runs every method on the same GSM8K questions, closed loop, and records
client throughput and latency and the engine calls per request (the hop is paid per call:
per-token Quiet-STaR makes one call per output token, REBASE one per node).

    python -m loadtest.benchmarks.remote_hop --out docs/data/remote_hop.json
    python -m loadtest.benchmarks.remote_hop --methods quiet_star --concurrency 8 \
        --sides inprocess remote remote_per_token --out docs/data/remote_hop_qs_c8.json
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest.harness import cli
from loadtest.harness.driver import run_bodies
from loadtest.harness.results import compare_sides
from loadtest.harness.servers import (
    EngineSettings,
    ServerProcess,
    start,
    start_gateway,
    start_replica,
    start_router,
)
from loadtest.harness.tables import two_side_table
from loadtest.stats import percentile

NAME = "remote_hop"
SIDES = ("inprocess", "remote")
PER_TOKEN_SIDE = "remote_per_token"  # the remote side as it was before replicas ran continuation
METHOD_BODY: dict[str, dict[str, Any]] = {
    "baseline": {"method": "baseline", "max_tokens": 64},
    "rebase": {
        "method": "rebase",
        "max_tokens": 96,
        "rebase": {"width": 4, "max_depth": 3, "max_step_tokens": 32},
    },
    "quiet_star": {"method": "quiet_star", "max_tokens": 8, "quiet_star": {"thought_tokens": 4}},
    "quiet_star+rebase": {
        "method": "quiet_star+rebase",
        "max_tokens": 32,
        "rebase": {"width": 2, "max_depth": 2, "max_step_tokens": 16},
        "quiet_star": {"thought_tokens": 2, "think": "step_start"},
    },
}
METRICS = (  # key, label, digits
    ("requests_per_s", "req/s", 3),
    ("p50_latency_s", "p50 latency s", 2),
    ("p95_latency_s", "p95 latency s", 2),
    ("engine_calls_per_request", "engine calls/req", 1),
)


@contextlib.contextmanager
def serving(
    side: str, engine: EngineSettings, logs: Path, rnd: int, quiet_star_engine: str
) -> Iterator[ServerProcess]:
    """The gateway of one side (and, for a remote side, its replica and router), always stopped.

    Both main sides run Quiet-STaR on ``quiet_star_engine`` (default ``continuation``, what
    replicas run), so the Quiet-STaR rows isolate the hop; ``remote_per_token`` runs the
    replicas' old per-token path."""
    flags = ("--quiet-star-engine", "per_token" if side == PER_TOKEN_SIDE else quiet_star_engine)
    if side == "inprocess":
        with start("gateway", engine, logs / f"r{rnd}-inprocess.log", *flags) as gateway:
            yield gateway
        return
    with contextlib.ExitStack() as stack:
        replica = stack.enter_context(start_replica(engine, logs / f"r{rnd}-{side}-replica.log"))
        router = stack.enter_context(
            start_router([replica.url], logs / f"r{rnd}-{side}-router.log")
        )
        gateway = stack.enter_context(
            start_gateway(engine, logs / f"r{rnd}-{side}.log", "--engine-url", router.url, *flags)
        )
        yield gateway


def bodies(args: argparse.Namespace, model: str, method: str, offset: int) -> list[dict]:
    prompts = [p for _, p in cli.questions(args, offset + args.num_prompts)][offset:]
    return [
        {"model": model, "prompt": p, "temperature": 0.7, "seed": i, **METHOD_BODY[method]}
        for i, p in enumerate(prompts)
    ]


def measure(args: argparse.Namespace, rnd: int, side: str) -> dict[str, Any]:
    engine = cli.engine_settings(args)
    session: dict[str, Any] = {"side": side, "round": rnd, "methods": {}}
    with serving(side, engine, cli.logs_dir(args), rnd, args.quiet_star_engine) as gateway:
        session["started_in_s"] = gateway.started_in_s
        for method in args.methods:
            warm = bodies(args, engine.name(), method, args.num_prompts)[: args.concurrency]
            run_bodies(gateway.url, warm, concurrency=args.concurrency)
            load = bodies(args, engine.name(), method, 0)
            done = run_bodies(gateway.url, load, concurrency=args.concurrency, check=False)
            ok = [r for r in done.results if r.error is None]
            calls = [(r.usage or {}).get("engine_calls", 0) for r in ok]
            session["methods"][method] = {
                "completed": len(ok),
                "failed": len(done.results) - len(ok),
                "requests_per_s": len(ok) / done.wall_s,
                "p50_latency_s": percentile([r.latency for r in ok], 50),
                "p95_latency_s": percentile([r.latency for r in ok], 95),
                "engine_calls_per_request": sum(calls) / max(len(calls), 1),
            }
    return session


def summary(sessions: list[dict], methods: list[str], other: str = "remote") -> dict[str, Any]:
    """Per method and metric: each side's spread over rounds, and `other` / in-process."""
    return {
        method: {
            key: compare_sides(
                [(s["side"], s["methods"][method][key]) for s in sessions], "inprocess", other
            )
            for key, _, _ in METRICS
        }
        for method in methods
    }


def tables(payload: dict[str, Any]) -> dict[str, str]:
    """One Markdown table per method for the docs (`<prefix>.<method>`), and one per method
    for the per-token remote side when it ran (`<prefix>.<method>.per_token`); the prefix is
    the result file's name, so each run's tables have names of their own."""
    prefix = payload.get("table_prefix", NAME)
    out = {}
    columns = (("inprocess", "in-process"), ("remote", "remote"))
    for method, s in payload["summary"].items():
        out[f"{prefix}.{method}"] = two_side_table(method, METRICS, s, columns)
    per_token = (("inprocess", "in-process"), (PER_TOKEN_SIDE, "remote, per token"))
    for method, s in (payload.get("summary_per_token") or {}).items():
        out[f"{prefix}.{method}.per_token"] = two_side_table(method, METRICS, s, per_token)
    return out


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=list(METHOD_BODY), choices=list(METHOD_BODY))
    p.add_argument(
        "--quiet-star-engine",
        choices=["per_token", "continuation"],
        default="continuation",
        help="both sides' Quiet-STaR engine (replicas run the continuation scheduler)",
    )
    p.add_argument(
        "--sides",
        nargs="+",
        default=list(SIDES),
        choices=[*SIDES, PER_TOKEN_SIDE],
        help=f"add {PER_TOKEN_SIDE} to measure the replicas' per-token Quiet-STaR too",
    )
    args = p.parse_args(argv)

    def summarize(sessions: list[dict]) -> dict[str, Any]:
        return summary(sessions, args.methods)

    def body(save: cli.Save) -> dict[str, Any]:
        payload = cli.rounds_payload(
            args, tuple(args.sides), lambda r, side: measure(args, r, side), summarize, save
        )
        payload["table_prefix"] = Path(args.out).stem if args.out else NAME
        if PER_TOKEN_SIDE in args.sides:
            payload["summary_per_token"] = summary(
                payload["sessions"], args.methods, PER_TOKEN_SIDE
            )
        return payload

    payload = cli.run_benchmark(NAME, args, body)
    print("\n\n".join(tables(payload).values()))


if __name__ == "__main__":
    main()
