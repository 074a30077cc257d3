"""REBASE on the gateway: prefix-cache reuse, problems per minute, FLOPs vs best-of-n, vs HF.

Phases (each one run stays under ~15 minutes on 2 cores; run them one after another):

* ``throughput``: the same seeded trees (16 GSM8K test questions, width 8) under several
  configurations, each in a *fresh* gateway (a warm prefix cache from an earlier run of the same
  seeded trees would flatter whoever runs second): ``fair8`` (fair scheduler, 8 requests in
  flight), ``fair1`` (one tree at a time), ``direct8`` (``--rebase-scheduler direct``, 8 in
  flight); any ``fairN``/``directN`` works, and ``--kv-cache-gib`` shrinks the KV cache to
  put the schedulers under memory pressure. Per configuration: problems per minute,
  prefix-cache hits as a fraction of the
  prompt tokens of all engine calls (from the usage of each response, cross-checked against
  vLLM's own ``vllm:prompt_tokens*`` counters), tree sizes. ``--best-of-n`` adds, in the first
  ``fair8`` session, plain sampling with ``n`` = the number of leaves of each question's tree
  and the same token cap, for FLOPs per question.
* ``hf``: seconds per question on a subset, gateway (one tree at a time) vs
  ``loadtest.benchmarks.hf_rebase`` (HF generate, one node at a time), alternating, with the
  gateway *stopped* while HF runs (both get the whole machine).

    python -m loadtest.benchmarks.rebase_bench throughput --configs fair8,direct8,fair1 \\
        --best-of-n --out results/rebase_throughput.json
    python -m loadtest.benchmarks.rebase_bench hf --questions 4 --rounds 2 \\
        --out results/rebase_hf.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from loadtest.benchmarks.gsm8k import DEFAULT_TEST_FILE, Question, load_questions
from loadtest.benchmarks.processes import (
    DEFAULT_MODEL,
    DEFAULT_NAME,
    REPO,
    EngineSettings,
    exit_on_sigterm,
    metric_total,
    scrape_metrics,
    start_gateway,
)
from loadtest.benchmarks.rebase_client import (
    Answered,
    TreeSettings,
    run_closed_loop,
    tree_prompt_tokens,
)
from loadtest.benchmarks.tables import fmt, machine, markdown_table, median, write_json

CONFIG_RE = re.compile(r"^(fair|direct)(\d+)$")


def parse_config(name: str) -> tuple[str, int]:
    """``fair8`` -> ("fair", 8): the gateway's REBASE scheduler and the requests in flight."""
    m = CONFIG_RE.match(name)
    if m is None:
        raise ValueError(f"config must look like fair8 or direct16, got {name!r}")
    return m.group(1), int(m.group(2))


ENGINE_COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
)


def counters(url: str) -> dict[str, float]:
    samples = scrape_metrics(url)
    return {name: metric_total(samples, name) for name in ENGINE_COUNTERS}


def tree_summary(answers: list[Answered]) -> dict[str, float]:
    """Sums over the questions of one run (only successful ones)."""
    ok = [a for a in answers if a.ok]
    reward_calls = sum(a.usage["engine_calls"] for a in ok) - sum(
        a.tree["nodes_expanded"] for a in ok
    )
    if reward_calls:
        raise RuntimeError("the reward model made engine calls: tree_prompt_tokens is invalid")
    prompt = sum(tree_prompt_tokens(a) for a in ok)
    cached = sum(a.usage["cached_tokens"] for a in ok)
    return {
        "ok": len(ok),
        "failed": len(answers) - len(ok),
        "engine_calls": sum(a.usage["engine_calls"] for a in ok),
        "tree_prompt_tokens": prompt,
        "cached_tokens": cached,
        "cache_hit_fraction": cached / prompt if prompt else float("nan"),
        "tree_tokens": sum(a.tree["tree_tokens"] for a in ok),
        "nodes": sum(a.tree["nodes_expanded"] for a in ok),
        "leaves": sum(a.tree["leaves"] for a in ok),
        "flops_executed": sum(a.usage["flops"]["executed"] for a in ok),
        "flops_nominal": sum(a.usage["flops"]["nominal"] for a in ok),
        "median_latency_s": median([a.latency_s for a in ok]),
    }


def run_config(
    name: str,
    args: argparse.Namespace,
    engine: EngineSettings,
    questions: list[Question],
    tag: str,
    best_of_n: bool,
) -> dict:
    """One fresh gateway: the trees at the configuration's concurrency, then maybe best-of-n."""
    scheduler, concurrency = parse_config(name)
    tree = TreeSettings(width=args.width, temperature=args.temperature, seed=args.seed)
    log_path = args.logs / f"{tag}-{name}.log"
    with start_gateway(engine, log_path, "--rebase-scheduler", scheduler) as gw:
        print(f"[{tag}] {name}: gateway healthy after {gw.started_in_s:.0f}s", flush=True)
        bodies = [(q, tree.rebase_body(engine.served_name, q)) for q in questions]
        before = counters(gw.url)
        wall, answers = asyncio.run(run_closed_loop(gw.url, bodies, concurrency))
        after = counters(gw.url)
        engine_delta = {k: after[k] - before[k] for k in ENGINE_COUNTERS}
        session = {
            "config": name,
            "round": tag,
            "scheduler": scheduler,
            "concurrency": concurrency,
            "wall_s": wall,
            "problems_per_minute": sum(a.ok for a in answers) / wall * 60,
            "trees": tree_summary(answers),
            "engine_counters": engine_delta,
            "engine_cache_hit_fraction": _ratio(
                engine_delta["vllm:prompt_tokens_cached_total"],
                engine_delta["vllm:prompt_tokens_total"],
            ),
            "answers": [a.to_json() for a in answers],
        }
        s = session["trees"]
        print(
            f"[{tag}] {name}: {session['problems_per_minute']:.2f} problems/min "
            f"({wall:.0f}s), cache hits {s['cache_hit_fraction']:.1%} (usage) / "
            f"{session['engine_cache_hit_fraction']:.1%} (vLLM), {s['ok']} ok",
            flush=True,
        )
        if best_of_n:
            session["best_of_n"] = run_best_of_n(gw.url, engine, tree, questions, answers)
    return session


def run_best_of_n(
    url: str,
    engine: EngineSettings,
    tree: TreeSettings,
    questions: list[Question],
    trees: list[Answered],
) -> list[dict]:
    """Baseline sampling with n = that question's number of leaves, 8 questions in flight."""
    by_index = {a.question: a for a in trees if a.ok}
    bodies = [
        (q, tree.best_of_n_body(engine.served_name, q, by_index[q.index].tree["leaves"]))
        for q in questions
        if q.index in by_index
    ]
    _, answers = asyncio.run(run_closed_loop(url, bodies, 8))
    rows = []
    for a in answers:
        t = by_index[a.question]
        rows.append(
            {
                "question": a.question,
                "n": t.tree["leaves"],
                "ok": a.ok,
                "rebase_flops": t.usage["flops"],
                "best_of_n_flops": a.usage.get("flops"),
                "rebase_tree_tokens": t.tree["tree_tokens"],
                "best_of_n_completion_tokens": a.usage.get("completion_tokens"),
                "rebase_cached_tokens": t.usage["cached_tokens"],
                "best_of_n_cached_tokens": a.usage.get("cached_tokens"),
            }
        )
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def throughput_report(sessions: list[dict]) -> str:
    rows = [
        [
            s["round"],
            s["config"],
            s["trees"]["ok"],
            fmt(s["wall_s"], 0),
            fmt(s["problems_per_minute"], 2),
            fmt(s["trees"]["median_latency_s"], 1),
            f"{s['trees']['cache_hit_fraction']:.1%}",
            f"{s['engine_cache_hit_fraction']:.1%}",
            s["trees"]["nodes"],
            s["trees"]["tree_tokens"],
            s["engine_counters"]["vllm:num_preemptions_total"],
        ]
        for s in sessions
    ]
    header = [
        "round", "config", "ok", "wall s", "problems/min", "p50 latency s",
        "cache hits (usage)", "cache hits (vLLM)", "nodes", "tree tokens", "preemptions",
    ]  # fmt: skip
    text = markdown_table(header, rows)
    names = dict.fromkeys(s["config"] for s in sessions)
    med = {
        c: median([s["problems_per_minute"] for s in sessions if s["config"] == c]) for c in names
    }
    lines = [f"- median problems/min {c}: {v:.2f}" for c, v in med.items()]
    if "fair8" in med and "fair1" in med:
        lines.append(f"- fair8 / fair1: {med['fair8'] / med['fair1']:.2f}x (target >= 2x)")
    for c in names:
        sched, n = parse_config(c)
        if sched == "fair" and f"direct{n}" in med:
            lines.append(f"- {c} / direct{n}: {med[c] / med[f'direct{n}']:.2f}x (goal >= 1.2x)")
    return text + "\n\n" + "\n".join(lines)


def flops_report(rows: list[dict]) -> str:
    table = []
    for r in rows:
        if not r["ok"]:
            continue
        rb, bn = r["rebase_flops"], r["best_of_n_flops"]
        table.append(
            [
                r["question"],
                r["n"],
                r["rebase_tree_tokens"],
                r["best_of_n_completion_tokens"],
                fmt(rb["executed"] / 1e12, 3),
                fmt(bn["executed"] / 1e12, 3),
                fmt(rb["executed"] / bn["executed"], 2),
                fmt(rb["nominal"] / 1e12, 3),
                fmt(bn["nominal"] / 1e12, 3),
                fmt(rb["nominal"] / bn["nominal"], 2),
            ]
        )
    header = [
        "question", "n = leaves", "REBASE tokens", "best-of-n tokens",
        "REBASE exec TFLOPs", "BoN exec TFLOPs", "exec ratio",
        "REBASE nominal TFLOPs", "BoN nominal TFLOPs", "nominal ratio",
    ]  # fmt: skip
    ok = [r for r in rows if r["ok"]]
    total = {
        f"{side}_{k}": sum(r[f"{side}_flops"][k] for r in ok)
        for side in ("rebase", "best_of_n")
        for k in ("executed", "nominal")
    }
    per_q = len(ok) or 1
    summary = (
        f"\n\nper question (mean over {len(ok)}): REBASE executed "
        f"{total['rebase_executed'] / per_q / 1e12:.3f} TFLOPs vs best-of-n "
        f"{total['best_of_n_executed'] / per_q / 1e12:.3f} "
        f"(ratio {_ratio(total['rebase_executed'], total['best_of_n_executed']):.2f}); nominal "
        f"{total['rebase_nominal'] / per_q / 1e12:.3f} vs "
        f"{total['best_of_n_nominal'] / per_q / 1e12:.3f} "
        f"(ratio {_ratio(total['rebase_nominal'], total['best_of_n_nominal']):.2f})"
    )
    return markdown_table(header, table) + summary


def throughput(args: argparse.Namespace) -> dict:
    engine = EngineSettings(
        model=args.model, served_name=args.served_model_name, kv_cache_gib=args.kv_cache_gib
    )
    questions = load_questions(args.data, args.questions, args.start)
    configs = args.configs.split(",")
    for name in configs:
        parse_config(name)
    sessions: list[dict] = []
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for name in order:
            best = (
                args.best_of_n and name == "fair8" and not any("best_of_n" in s for s in sessions)
            )
            sessions.append(run_config(name, args, engine, questions, f"r{r + 1}", best))
            write_json(args.out, {"partial": True, "sessions": sessions})
    text = throughput_report(sessions)
    bon = next((s["best_of_n"] for s in sessions if "best_of_n" in s), None)
    if bon:
        text += "\n\n" + flops_report(bon)
    print(text)
    return {"sessions": sessions, "markdown": text, "engine": engine.__dict__}


def hf_vs_gateway(args: argparse.Namespace) -> dict:
    """Alternate: gateway (fresh, fair, one tree at a time) then HF in a subprocess, stopped."""
    engine = EngineSettings(model=args.model, served_name=args.served_model_name)
    questions = load_questions(args.data, args.questions, args.start)
    runs: list[dict] = []
    for r in range(args.rounds):
        tag = f"r{r + 1}"
        first = ("gateway", "hf") if args.gateway_first else ("hf", "gateway")
        order = first if r % 2 == 0 else first[::-1]
        for side in order:
            if side == "gateway":
                s = run_config("fair1", args, engine, questions, tag, best_of_n=False)
                per_q = [
                    {
                        "question": a["question"],
                        "seconds": a["latency_s"],
                        "generated_tokens": a["tree"].get("tree_tokens"),
                    }
                    for a in s["answers"]
                    if a["ok"]
                ]
                runs.append({"side": "gateway", "round": tag, "trees": per_q, "session": s})
            else:
                runs.append({"side": "hf", "round": tag, "trees": run_hf_subprocess(args, tag)})
            write_json(args.out, {"partial": True, "runs": runs})
    text = hf_report(runs)
    print(text)
    return {"runs": runs, "markdown": text}


def run_hf_subprocess(args: argparse.Namespace, tag: str) -> list[dict]:
    out = args.logs / f"{tag}-hf.json"
    cmd = [
        sys.executable, "-m", "loadtest.benchmarks.hf_rebase",
        "--model", args.model, "--data", str(args.data),
        "--questions", str(args.questions), "--start", str(args.start),
        "--width", str(args.width), "--temperature", str(args.temperature),
        "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    print(f"[{tag}] hf: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    trees = json.loads(out.read_text())["trees"]
    return [
        {
            "question": t["question"],
            "seconds": t["seconds"],
            "generated_tokens": t["generated_tokens"],
        }
        for t in trees
    ]


def hf_report(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        secs = [t["seconds"] for t in run["trees"]]
        toks = sum(t["generated_tokens"] or 0 for t in run["trees"])
        rows.append(
            [
                run["round"],
                run["side"],
                len(secs),
                fmt(median(secs), 1),
                fmt(sum(secs) / max(len(secs), 1), 1),
                toks,
                fmt(toks / sum(secs), 1) if secs else "–",
            ]
        )
    header = ["round", "side", "questions", "p50 s/question", "mean s/question",
              "generated tokens", "generated tok/s"]  # fmt: skip

    def med(side: str, key: str) -> float:
        vals = []
        for run in runs:
            if run["side"] == side:
                secs = [t["seconds"] for t in run["trees"]]
                toks = sum(t["generated_tokens"] or 0 for t in run["trees"])
                vals.append(sum(secs) / len(secs) if key == "s_per_q" else toks / sum(secs))
        return median(vals)

    text = markdown_table(header, rows)
    text += (
        f"\n\n- mean seconds per question, median over rounds: gateway "
        f"{med('gateway', 's_per_q'):.1f} s, HF {med('hf', 's_per_q'):.1f} s "
        f"(HF / gateway = {med('hf', 's_per_q') / med('gateway', 's_per_q'):.2f}x)"
        f"\n- generated tokens per second: gateway {med('gateway', 'tok_s'):.1f}, "
        f"HF {med('hf', 'tok_s'):.1f} "
        f"(gateway / HF = {med('gateway', 'tok_s') / med('hf', 'tok_s'):.2f}x)"
    )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["throughput", "hf"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--served-model-name", default=DEFAULT_NAME)
    parser.add_argument("--data", type=Path, default=DEFAULT_TEST_FILE)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs",
        default="fair8,direct8,fair1",
        help="comma-separated SCHEDULER+CONCURRENCY, e.g. fair8,direct8,fair1,fair16",
    )
    parser.add_argument("--kv-cache-gib", type=int, default=4, help="gateway KV cache (GiB)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--best-of-n", action="store_true")
    parser.add_argument(
        "--gateway-first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hf phase: which side runs first in odd rounds (alternate it across invocations)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/rebase_bench.json"))
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    args.logs = args.logs or args.out.parent / f"{args.out.stem}_logs"
    started = time.monotonic()
    result = throughput(args) if args.phase == "throughput" else hf_vs_gateway(args)
    tree = TreeSettings(width=args.width, temperature=args.temperature, seed=args.seed)
    payload = {
        "benchmark": f"rebase_bench {args.phase}",
        "machine": machine(),
        "tree_settings": tree.__dict__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_s": time.monotonic() - started,
        **result,
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
