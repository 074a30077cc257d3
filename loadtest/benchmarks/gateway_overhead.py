"""What the gateway costs on top of plain ``vllm serve``: same load, same engine, A B A B.

Both servers run the same vLLM AsyncLLM with the same engine settings
(``processes.EngineSettings`` = the gateway's CPU defaults); the gateway adds its request
path (validation, method dispatch, usage/FLOPs accounting, metrics, SSE). On a 2-core machine
both cannot run at once, so each round starts one server, warms it up, measures, stops it,
then does the same for the other; rounds alternate the order (A B, B A, ...) so drift in
background load hits both alike. Reported: per-round and median throughput (requests/s,
output tokens/s), median and p95 end-to-end latency, and the ratios gateway / vLLM.

    python -m loadtest.benchmarks.gateway_overhead --rounds 2 --out results/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from loadtest.benchmarks.processes import (
    DEFAULT_MODEL,
    DEFAULT_NAME,
    EngineSettings,
    ServerProcess,
    exit_on_sigterm,
    start_gateway,
    start_vllm_serve,
)
from loadtest.benchmarks.streaming import LoadResult, random_token_prompts, run_load
from loadtest.benchmarks.tables import fmt, machine, markdown_table, median, pct, write_json
from loadtest.benchmarks.vllm_bench import run_vllm_bench, vllm_bench_command

KINDS = ("vllm", "gateway")
EXTRA_BODY = {"vllm": None, "gateway": {"method": "baseline"}}


def summarize(load: LoadResult) -> dict[str, float]:
    ok = [r for r in load.records if r.ok]
    latencies = [r.latency_s for r in ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    return {
        "completed": load.completed,
        "failed": len(load.records) - load.completed,
        "duration_s": load.duration_s,
        "requests_per_s": load.completed / load.duration_s,
        "output_tokens_per_s": load.output_tokens / load.duration_s,
        "median_latency_s": median(latencies),
        "p95_latency_s": pct(latencies, 95),
        "median_ttft_s": median(ttfts),
        "p95_ttft_s": pct(ttfts, 95),
    }


def start(kind: str, engine: EngineSettings, log_path: Path) -> ServerProcess:
    if kind == "gateway":
        return start_gateway(engine, log_path)
    return start_vllm_serve(engine, log_path)


def measure(kind: str, args: argparse.Namespace, engine: EngineSettings, tag: str) -> dict:
    """One server session: start, warm up, measure with our client (and vllm bench), stop."""
    log_path = args.logs / f"{tag}-{kind}.log"
    prompts = random_token_prompts(args.num_prompts, args.input_len, seed=args.seed)
    # Two full waves: the first load after an engine start runs measurably slower (allocator
    # and page-fault warm-up), and one wave did not absorb all of it.
    warmup = random_token_prompts(2 * args.concurrency, args.input_len, seed=args.seed + 1)
    with start(kind, engine, log_path) as server:
        print(f"[{tag}] {kind} healthy after {server.started_in_s:.0f}s", flush=True)
        kwargs = {"max_tokens": args.output_len, "extra_body": EXTRA_BODY[kind]}
        asyncio.run(
            run_load(server.url, engine.served_name, warmup, concurrency=args.concurrency, **kwargs)
        )
        load = asyncio.run(
            run_load(
                server.url, engine.served_name, prompts, concurrency=args.concurrency, **kwargs
            )
        )
        session = {"kind": kind, "round": tag, "started_in_s": server.started_in_s}
        session["client"] = summarize(load)
        session["client_records"] = load.to_json()
        if args.vllm_bench:
            result_path = args.logs / f"{tag}-{kind}-vllm-bench.json"
            cmd = vllm_bench_command(
                server.url,
                engine.served_name,
                engine.model,
                result_path,
                num_prompts=args.num_prompts,
                concurrency=args.concurrency,
                input_len=args.input_len,
                output_len=args.output_len,
                seed=args.seed,
                extra_body=EXTRA_BODY[kind],
            )
            session["vllm_bench_command"] = " ".join(cmd)
            session["vllm_bench"] = run_vllm_bench(cmd, result_path)
    c = session["client"]
    print(
        f"[{tag}] {kind}: {c['requests_per_s']:.3f} req/s, {c['output_tokens_per_s']:.1f} tok/s, "
        f"median {c['median_latency_s']:.2f}s, p95 {c['p95_latency_s']:.2f}s",
        flush=True,
    )
    return session


def ratios(sessions: list[dict], key: str, source: str = "client") -> dict[str, float]:
    """Median over rounds of each side, and gateway / vLLM of those medians."""
    med = {k: median([s[source][key] for s in sessions if s["kind"] == k]) for k in KINDS}
    return {"vllm": med["vllm"], "gateway": med["gateway"], "ratio": med["gateway"] / med["vllm"]}


VLLM_BENCH_KEYS = {
    "requests_per_s": "request_throughput",
    "output_tokens_per_s": "output_throughput",
    "median_latency_s": "median_e2el_ms",
    "p95_latency_s": "p95_e2el_ms",
    "median_ttft_s": "median_ttft_ms",
}


def vllm_bench_view(session: dict) -> dict[str, float]:
    """vllm bench's numbers under our key names (ms -> s)."""
    raw = session["vllm_bench"]
    out = {k: raw[v] / (1000 if v.endswith("_ms") else 1) for k, v in VLLM_BENCH_KEYS.items()}
    out["completed"], out["failed"] = raw["completed"], raw["failed"]
    out["total_output_tokens"] = raw["total_output_tokens"]
    out["errors"] = sorted({e[:120] for e in raw.get("errors") or [] if e})
    return out


def report(sessions: list[dict], source: str) -> str:
    rows = [
        [
            s["round"],
            s["kind"],
            s[source]["completed"],
            fmt(s[source]["requests_per_s"], 3),
            fmt(s[source]["output_tokens_per_s"], 1),
            fmt(s[source]["median_latency_s"], 2),
            fmt(s[source]["p95_latency_s"], 2),
            fmt(s[source]["median_ttft_s"], 3),
        ]
        for s in sessions
    ]
    header = ["round", "server", "ok", "req/s", "out tok/s", "p50 lat s", "p95 lat s", "p50 TTFT s"]
    text = markdown_table(header, rows) + "\n\n"
    keys = list(VLLM_BENCH_KEYS)
    summary = [
        [k, fmt(r["vllm"], 3), fmt(r["gateway"], 3), fmt(r["ratio"], 3)]
        for k in keys
        for r in [ratios(sessions, k, source)]
    ]
    return text + markdown_table(["median over rounds", "vLLM", "gateway", "ratio"], summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--served-model-name", default=DEFAULT_NAME)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--order",
        choices=["vllm,gateway", "gateway,vllm"],
        default="vllm,gateway",
        help="who goes first in odd rounds (alternate it across invocations)",
    )
    parser.add_argument(
        "--vllm-bench",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run `vllm bench serve` in each server session (after our client)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/gateway_overhead.json"))
    parser.add_argument(
        "--logs", type=Path, default=None, help="server logs (default: next to --out)"
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    args.logs = args.logs or args.out.parent / f"{args.out.stem}_logs"
    engine = EngineSettings(model=args.model, served_name=args.served_model_name)

    started = time.monotonic()
    sessions: list[dict] = []
    for r in range(args.rounds):
        first = tuple(args.order.split(","))
        order = first if r % 2 == 0 else first[::-1]  # A B, B A, A B, ...
        for kind in order:
            sessions.append(measure(kind, args, engine, f"r{r + 1}"))
            write_json(args.out, {"partial": True, "sessions": sessions})

    sources = ["client"] + (["vllm_bench"] if args.vllm_bench else [])
    for s in sessions:
        if args.vllm_bench:
            s["vllm_bench_view"] = vllm_bench_view(s)
    text = "## our streaming client\n\n" + report(sessions, "client")
    if args.vllm_bench:
        text += "\n\n## vllm bench serve\n\n" + report(sessions, "vllm_bench_view")
    print(text)
    payload = {
        "benchmark": "gateway_overhead",
        "machine": machine(),
        "engine": engine.__dict__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_s": time.monotonic() - started,
        "summary": {
            src: {
                k: ratios(sessions, k, src if src == "client" else "vllm_bench_view")
                for k in VLLM_BENCH_KEYS
            }
            for src in sources
        },
        "sessions": sessions,
        "markdown": text,
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
