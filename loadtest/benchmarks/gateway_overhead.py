"""What the gateway costs on top of plain ``vllm serve``: same load, same engine, A B B A.

Both servers run the same vLLM engine with the same settings (``EngineSettings``); the gateway
adds its request path (validation, method dispatch, usage/FLOPs accounting, metrics, SSE). On a
2-core machine both cannot run at once, so each session starts one server, warms it up (two
waves: the first load after a start runs slower), measures with our streaming client and then
with ``vllm bench serve``, and stops it. Both clients must see every output token
(``out tok/req`` = --output-len on both sides), or the comparison is void.

    python -m loadtest.benchmarks.gateway_overhead --out docs/data/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from loadtest.harness import cli
from loadtest.harness.driver import run_bodies
from loadtest.harness.results import compare_sides
from loadtest.harness.servers import start
from loadtest.harness.tables import two_side_table
from loadtest.stats import percentile

NAME = "gateway_overhead"
SIDES = ("vllm", "gateway")
EXTRA_BODY: dict[str, dict[str, Any]] = {"vllm": {}, "gateway": {"method": "baseline"}}
METRICS = (  # key, label, digits
    ("requests_per_s", "req/s", 3),
    ("output_tokens_per_s", "out tok/s", 1),
    ("p50_latency_s", "p50 latency s", 2),
    ("p95_latency_s", "p95 latency s", 2),
    ("p50_ttft_s", "p50 TTFT s", 3),
    ("output_tokens_per_request", "out tok/req", 1),
)
VLLM_BENCH_KEYS = {  # our key -> vllm bench's result key (ms are converted to s)
    "requests_per_s": "request_throughput",
    "output_tokens_per_s": "output_throughput",
    "p50_latency_s": "median_e2el_ms",
    "p95_latency_s": "p95_e2el_ms",
    "p50_ttft_s": "median_ttft_ms",
}


def random_token_prompts(
    count: int, length: int, seed: int, low: int = 1000, high: int = 40000
) -> list[list[int]]:
    """Prompts as token ids: both servers see exactly the same tokens (no tokenizer drift).
    The id range avoids SmolLM2's special tokens (ids < 17) and byte-level fragments."""
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(count)]


def bodies(args: argparse.Namespace, model: str, side: str, seed: int, count: int) -> list[dict]:
    return [
        {
            "model": model,
            "prompt": p,
            "max_tokens": args.output_len,
            "temperature": 0.0,
            "ignore_eos": True,
            **EXTRA_BODY[side],
        }
        for p in random_token_prompts(count, args.input_len, seed, *args.token_ids)
    ]


def client_view(done) -> dict[str, float]:
    ok = [r for r in done.results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    return {
        "completed": len(ok),
        "failed": len(done.results) - len(ok),
        "requests_per_s": len(ok) / done.wall_s,
        "output_tokens_per_s": tokens / done.wall_s,
        "p50_latency_s": percentile([r.latency for r in ok], 50),
        "p95_latency_s": percentile([r.latency for r in ok], 95),
        "p50_ttft_s": percentile([r.ttft for r in ok if r.ttft is not None], 50),
        "output_tokens_per_request": tokens / max(len(ok), 1),
    }


def vllm_bench_view(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: raw[v] / (1000 if v.endswith("_ms") else 1) for k, v in VLLM_BENCH_KEYS.items()
    }
    out["completed"], out["failed"] = raw["completed"], raw["failed"]
    out["output_tokens_per_request"] = raw["total_output_tokens"] / max(raw["completed"], 1)
    out["errors"] = sorted({e[:120] for e in raw.get("errors") or [] if e})
    return out


def measure(args: argparse.Namespace, rnd: int, side: str) -> dict[str, Any]:
    from loadtest.harness.vllm_bench import run_vllm_bench, vllm_bench_command

    engine = cli.engine_settings(args)
    logs = cli.logs_dir(args)
    with start(side, engine, logs / f"r{rnd}-{side}.log") as server:
        model = engine.name()
        warm = bodies(args, model, side, args.seed + 1, 2 * args.concurrency)
        run_bodies(server.url, warm, concurrency=args.concurrency, stream=True)
        load = bodies(args, model, side, args.seed, args.num_prompts)
        done = run_bodies(server.url, load, concurrency=args.concurrency, stream=True)
        session: dict[str, Any] = {
            "side": side,
            "round": rnd,
            "started_in_s": server.started_in_s,
            "client": client_view(done),
            "client_latencies_s": [round(r.latency, 4) for r in done.results],
        }
        if args.vllm_bench:
            result_path = logs / f"r{rnd}-{side}-vllm-bench.json"
            cmd = vllm_bench_command(
                server.url,
                model,
                engine.model_path(),
                result_path,
                num_prompts=args.num_prompts,
                concurrency=args.concurrency,
                input_len=args.input_len,
                output_len=args.output_len,
                seed=args.seed,
                extra_body=EXTRA_BODY[side] or None,
            )
            session["vllm_bench"] = vllm_bench_view(run_vllm_bench(cmd, result_path))
    return session


def summary(sessions: list[dict], source: str) -> dict[str, Any]:
    """Per metric: each side's spread over rounds and the ratio gateway / vLLM of medians."""
    return {
        key: compare_sides([(s["side"], s[source][key]) for s in sessions if source in s], *SIDES)
        for key, _, _ in METRICS
    }


def tables(payload: dict[str, Any]) -> dict[str, str]:
    """Named Markdown tables for docs/benchmarks.md."""
    columns = (("vllm", "vllm serve"), ("gateway", "gateway"))
    return {
        f"{NAME}.{source}": two_side_table(title, METRICS, payload["summary"][source], columns)
        for source, title in (("client", "our client"), ("vllm_bench", "vllm bench serve"))
        if payload["summary"].get(source)
    }


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--vllm-bench", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--token-ids",
        type=int,
        nargs=2,
        default=(1000, 40000),
        metavar=("LOW", "HIGH"),
        help="prompt token ids are drawn from [LOW, HIGH) (default: SmolLM2's plain text range)",
    )
    args = p.parse_args(argv)

    def body(save: cli.Save) -> dict[str, Any]:
        sources = ["client"] + (["vllm_bench"] if args.vllm_bench else [])
        return cli.rounds_payload(
            args,
            SIDES,
            lambda r, side: measure(args, r, side),
            lambda ss: {src: summary(ss, src) for src in sources},
            save,
        )

    payload = cli.run_benchmark(NAME, args, body)
    print("\n\n".join(tables(payload).values()))


if __name__ == "__main__":
    main()
