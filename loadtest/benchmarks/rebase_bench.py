"""REBASE on the gateway: throughput by scheduler, prefix-cache reuse, FLOPs, and vs HF.

``throughput``: the same seeded trees (16 GSM8K test questions, width 8) under configurations
``SCHEDULERn`` (the gateway's ``--rebase-scheduler`` priority|fair|direct, n requests in flight),
each in a *fresh* gateway (a warm cache from an earlier run of the same trees would flatter
whoever runs second), in alternating rounds. Closed loop (n in flight), or with
``--arrival-rate R`` open loop (Poisson arrivals, R requests/s, the same seeded schedule for every
configuration; n is then only the name). Two different questions, kept apart in the report:

* the **scheduler**: ``priority16`` / ``fair16`` vs ``direct16`` (same load, only the scheduler);
* **batching**: ``fair8`` vs ``fair1`` (8 trees in flight vs one at a time, any scheduler).

Per session: problems/min, p50/p95 request latency, engine preemptions, prefix-cache hits over
the prompt tokens of all engine calls (from ``usage`` and from vLLM's own counters), mean batch
occupancy (vLLM's ``num_requests_running`` sampled every ``--sample-s`` during the load, over
``--max-num-seqs``), accuracy of the vote, FLOPs and tree sizes. ``--best-of-n`` adds plain
sampling with ``n`` = each question's leaves and the same token cap, for FLOPs per question.

``hf``: seconds per question and per generated token, gateway (one tree at a time) vs
``hf_rebase`` (HF generate, one node at a time) in alternating rounds, with the gateway
*stopped* while HF runs. The trees are not token-identical (different random streams), so the
generated tokens of each side are reported next to the seconds.

    python -m loadtest.benchmarks.rebase_bench throughput --best-of-n \
        --out docs/data/rebase_throughput.json
    python -m loadtest.benchmarks.rebase_bench throughput --configs priority16,direct16,fair16 \
        --width 16 --questions 16 --max-num-seqs 64 --out docs/data/rebase_scheduler.json
    python -m loadtest.benchmarks.rebase_bench hf --questions 2 --out docs/data/rebase_hf.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from typing import Any

from loadtest.harness import accounting, cli
from loadtest.harness.client import CallResult
from loadtest.harness.data import Problem
from loadtest.harness.driver import run_bodies
from loadtest.harness.easy_arithmetic import easy_problems
from loadtest.harness.metrics import metric_total, scrape_metrics
from loadtest.harness.provenance import adopt_sides
from loadtest.harness.rebase_tree import TreeSettings
from loadtest.harness.results import by_side, spread
from loadtest.harness.rounds import run_rounds
from loadtest.harness.servers import REPO, start_gateway
from loadtest.harness.tables import fmt, fmt_spread, markdown_table
from server.core.answers import answers_match
from server.rebase.params import AdaptiveStop

CONFIG_RE = re.compile(
    r"^(priority|fair|direct)(\d+)(?:-share(\d+))?(?:-(off|exact|c\d\d)(?:-w(\d+))?)?$"
)
RUNNING_GAUGE = "vllm:num_requests_running"
ENGINE_COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:num_preemptions_total",
)


def parse_config(name: str) -> tuple[str, int]:
    """``fair8`` -> ("fair", 8): the gateway's REBASE scheduler and the requests in flight."""
    return _match_config(name)[:2]


def config_min_share(name: str) -> int | None:
    """``priority16-share0`` -> 0: the `priority` scheduler's fairness bound
    (``--rebase-min-share``); None: the gateway's default."""
    return _match_config(name)[2]


def config_early_stop(name: str) -> dict[str, Any] | None:
    """``fair16-exact`` -> the REBASE block's early-stop fields: ``-off`` runs the full search
    in shadow mode (where each rule would have stopped, docs/architecture.md, "Early
    stopping"), ``-exact`` the exact rule, ``-c95`` the adaptive one at confidence 0.95 (its
    default window), ``-c95-w16`` with a window of 16 expansions. None: the server's default."""
    _match_config(name)
    m = CONFIG_RE.match(name)
    suffix, window = m.group(4), m.group(5)  # type: ignore[union-attr]
    if suffix is None:
        return None
    if window is not None and not suffix.startswith("c"):
        raise ValueError(f"a window (-w) goes with an adaptive rule (-c95-w16), got {name!r}")
    if suffix == "off":
        return {"early_stop": "off", "shadow_stop": True}
    if suffix == "exact":
        return {"early_stop": "exact"}
    default_window = AdaptiveStop.model_fields["window"].default
    window_size = default_window if window is None else int(window)
    return {"early_stop": {"confidence": int(suffix[1:]) / 100, "window": window_size}}


def _match_config(name: str) -> tuple[str, int, int | None]:
    m = CONFIG_RE.match(name)
    if m is None or (m.group(3) is not None and m.group(1) != "priority"):
        raise ValueError(
            "config must look like priority16, priority16-share0, fair8, direct16 or "
            f"fair16-exact (early stop: -off, -exact, -c90, -c90-w16), got {name!r}"
        )
    return m.group(1), int(m.group(2)), None if m.group(3) is None else int(m.group(3))


def tree_prompt_tokens(usage: dict[str, Any], tree: dict[str, Any]) -> int:
    """Prompt tokens summed over every engine call of one REBASE request.

    The usage meter (server/core/usage.py) charges each call ``forward = prompt - cached +
    max(generated - 1, 0)``; every step call generates at least one token, and the generated
    tokens of all calls are the tree's ``tree_tokens``, so
    ``sum(prompt) = forward + cached - tree_tokens + engine_calls``. Valid while the reward
    model makes no engine calls (the arithmetic PRM runs on the CPU; ``trees`` checks this).
    """
    return (
        usage["forward_tokens"]
        + usage["cached_tokens"]
        - tree["tree_tokens"]
        + usage["engine_calls"]
    )


def early_stops(results: list[CallResult], problems: list[Problem]) -> list[dict[str, Any]]:
    """Per question: the tree's answer, why its search ended, what it spent and (shadow mode)
    where each rule would have stopped."""
    out = []
    for r, p in zip(results, problems, strict=True):
        if r.error is not None:
            out.append({"question": p.index, "error": r.error})
            continue
        t = r.details["rebase"][0]
        out.append(
            {
                "question": p.index,
                "answer": t["answer"],
                "ended": t.get("ended"),
                "spent": t.get("spent"),
                "votes": t.get("votes"),
                "remaining_leaves": t.get("remaining_leaves"),
                "shadow": t.get("shadow"),
            }
        )
    return out


def trees(results: list[CallResult]) -> dict[str, float]:
    ok = [(r.usage, r.details["rebase"][0]) for r in results if r.error is None]
    if any(u.get("components", {}).get("reward", {}).get("engine_calls") for u, _ in ok):
        raise RuntimeError("the reward model made engine calls: tree_prompt_tokens is invalid")
    # Trees an early stop cut had calls aborted mid-step, whose tokens are not in tree_tokens:
    # the cache-hit fraction is taken over the trees that ran to their end.
    whole = [(u, t) for u, t in ok if t.get("ended", "complete") in ("complete", "depth")]
    prompt = sum(tree_prompt_tokens(u, t) for u, t in whole)
    cached = sum(u["cached_tokens"] for u, _ in whole)
    return {
        "ok": len(ok),
        "cache_hit_fraction": cached / prompt if prompt else None,
        "tree_tokens": sum(t["tree_tokens"] for _, t in ok),
        "nodes": sum(t["nodes_expanded"] for _, t in ok),
        "flops_executed": sum(u["flops"]["executed"] for u, _ in ok),
        "flops_nominal": sum(u["flops"]["nominal"] for u, _ in ok),
    }


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def accuracy(results: list[CallResult], problems: list[Problem]) -> float | None:
    """Share of questions whose tree's vote matches the GSM8K reference."""
    pairs = [(r, p) for r, p in zip(results, problems, strict=True) if r.error is None]
    if not pairs:
        return None
    right = sum(answers_match(r.details["rebase"][0]["answer"], p.reference) for r, p in pairs)
    return right / len(pairs)


class OccupancySampler:
    """Samples vLLM's running-sequences gauge while a load runs (a thread: the driver owns
    the event loop). Mean running / max_num_seqs is the batch occupancy the level barrier and
    the scheduler leave; the gauge is refreshed on vLLM's stats interval."""

    def __init__(self, url: str, every_s: float) -> None:
        self.url, self.every_s = url, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(metric_total(scrape_metrics(self.url), RUNNING_GAUGE))
            except Exception:
                continue

    def __enter__(self) -> OccupancySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def session(args, tree: TreeSettings, rnd: int, name: str, best_of_n: bool) -> dict[str, Any]:
    """One fresh gateway: the trees at the configuration's load, then maybe best-of-n."""
    scheduler, concurrency = parse_config(name)
    engine = replace(cli.engine_settings(args), max_num_seqs=args.max_num_seqs)
    if args.dataset == "easy_arithmetic":
        qs = easy_problems(args.questions, seed=args.seed)
    else:
        qs = cli.questions(args, args.questions)
    early_stop = config_early_stop(name)
    log = cli.logs_dir(args) / f"r{rnd}-{name}.log"
    extra = ["--rebase-scheduler", scheduler]
    if (min_share := config_min_share(name)) is not None:
        extra += ["--rebase-min-share", str(min_share)]
    if args.max_in_flight is not None:
        extra += ["--rebase-max-in-flight", str(args.max_in_flight)]
    load: dict[str, Any] = {"concurrency": concurrency}
    if args.arrival_rate:  # open loop: the same seeded arrival schedule for every config
        load = {"rate": args.arrival_rate, "seed": args.seed}
    with start_gateway(engine, log, *extra, attempts=2) as gw:
        # Warm-up (allocator, first batches), on a prompt the trees do not share.
        warm = {"model": engine.name(), "prompt": "Warm-up.", "max_tokens": 16, "n": 2}
        run_bodies(gw.url, [warm], concurrency=1)
        before = accounting.idle_samples(gw.url)  # the warm-up's counters published
        with OccupancySampler(gw.url, args.sample_s) as occupancy:
            bodies = [tree.body(engine.name(), p, q) for p, q in qs]
            if early_stop is not None:
                bodies = [{**b, "rebase": {**b["rebase"], **early_stop}} for b in bodies]
            done = run_bodies(gw.url, bodies, **load)
        after = accounting.idle_samples(gw.url)
        counters = {k: metric_total(after, k) - metric_total(before, k) for k in ENGINE_COUNTERS}
        latencies = [r.latency for r in done.results]
        running = occupancy.samples
        out: dict[str, Any] = {
            "side": name,
            "round": rnd,
            "load": "open" if args.arrival_rate else "closed",
            "wall_s": done.wall_s,
            "problems_per_minute": len(done.results) / done.wall_s * 60,
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95),
            "accuracy": accuracy(done.results, [p for p, _ in qs]),
            "mean_running": statistics.fmean(running) if running else None,
            "occupancy": statistics.fmean(running) / args.max_num_seqs if running else None,
            "trees": trees(done.results),
            "engine_counters": counters,
            "accounting": accounting.check(before, after),
            "engine_cache_hit_fraction": counters["vllm:prompt_tokens_cached_total"]
            / max(counters["vllm:prompt_tokens_total"], 1),
            "latencies_s": [round(r.latency, 3) for r in done.results],
            "dataset": args.dataset,
            "early_stop": early_stop,
            "early_stops": early_stops(done.results, [p for p, _ in qs]),
        }
        if best_of_n:
            leaves = [r.details["rebase"][0]["leaves"] for r in done.results]
            bon = run_bodies(
                gw.url,
                [tree.body(engine.name(), p, q, n) for (p, q), n in zip(qs, leaves, strict=True)],
                concurrency=8,
            )
            out["best_of_n"] = {
                "n": leaves,
                "rebase_flops": [r.usage["flops"] for r in done.results],
                "best_of_n_flops": [r.usage["flops"] for r in bon.results],
            }
    return out


def throughput(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    tree = TreeSettings(width=args.width, temperature=args.temperature, seed=args.seed)
    configs = args.configs.split(",")
    for c in configs:
        parse_config(c)
    sessions = run_rounds(
        configs,
        lambda r, c: session(args, tree, r, c, args.best_of_n and r == 1 and c == configs[0]),
        args.rounds,
        lambda ss: save({"sessions": ss}),
    )
    return {"tree": asdict(tree), "settings": _settings(args), "sessions": sessions}


def hf(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    tree = TreeSettings(width=args.width, temperature=args.temperature, seed=args.seed)

    def measure(rnd: int, side: str) -> dict[str, Any]:
        if side == "gateway":
            s = session(args, tree, rnd, "fair1", best_of_n=False)
            tokens = s["trees"]["tree_tokens"]
            seconds = sum(s["latencies_s"])
        else:
            out = cli.logs_dir(args) / f"r{rnd}-hf.json"
            cmd = [
                sys.executable, "-m", "loadtest.benchmarks.hf_rebase", "--questions",
                str(args.questions), "--width", str(args.width), "--temperature",
                str(args.temperature), "--seed", str(args.seed), "--out", str(out),
                *(["--model", args.model] if args.model else []),
                *(["--data", args.data] if args.data else []),
            ]  # fmt: skip
            subprocess.run(cmd, cwd=REPO, check=True)
            hf_result = json.loads(out.read_text())
            adopt_sides(hf_result)
            hf_trees = hf_result["trees"]
            tokens = sum(t["generated_tokens"] for t in hf_trees)
            seconds = sum(t["seconds"] for t in hf_trees)
        return {
            "side": side,
            "round": rnd,
            "seconds_per_question": seconds / args.questions,
            "generated_tokens": tokens,
            "generated_tokens_per_s": tokens / seconds,
        }

    sides = ("gateway", "hf")
    sessions = run_rounds(sides, measure, args.rounds, lambda ss: save({"sessions": ss}))
    return {"tree": asdict(tree), "settings": _settings(args), "sessions": sessions}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("out", "logs")}


def _median(payload: dict, side: str, key: str) -> float | None:
    return spread(s[key] for s in payload["sessions"] if s["side"] == side)["median"]


def _ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b, 2) + "x" if a is not None and b else "–"


EARLY_STOP_TABLES = (
    "rebase_early_stop",
    "rebase_early_stop_open",
    "rebase_early_stop_easy",
    "rebase_early_stop_adaptive",
)


def _early_stop_label(fields: dict[str, Any] | None) -> str:
    if fields is None:
        return "server default"
    rule = fields["early_stop"]
    label = f"confidence {rule['confidence']:g}" if isinstance(rule, dict) else rule
    if isinstance(rule, dict) and rule.get("window") is not None:
        label += f", window {rule['window']}"
    return label + (" (shadow)" if fields.get("shadow_stop") else "")


def _same(a: str | None, b: str | None) -> bool:
    return a == b or (a is not None and b is not None and answers_match(a, b))


def shadow_summary(sessions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """From the shadow-mode sessions: per rule, how often its answer at the stop point equals
    the full search's (over all trees), the share of trees it fired on, and the FLOPs it would
    have saved (1 - sum of FLOPs at its stop point / sum of the full trees' FLOPs; trees it
    never fired on count as no saving). Shadow FLOPs count the calls finished by the stop point."""
    trees = [t for s in sessions for t in s.get("early_stops", []) if t.get("shadow")]
    out: dict[str, dict[str, float]] = {}
    for rule in sorted({r for t in trees for r in t["shadow"]}):
        fired = [t for t in trees if t["shadow"].get(rule)]
        agree = sum(_same(t["shadow"][rule]["answer"], t["answer"]) for t in fired)
        full = sum(t["spent"]["flops"] for t in trees)
        at_stop = sum(
            t["shadow"][rule]["flops"] if t["shadow"].get(rule) else t["spent"]["flops"]
            for t in trees
        )
        out[rule] = {
            "trees": len(trees),
            "fired": len(fired) / len(trees),
            "agreement": (agree + len(trees) - len(fired)) / len(trees),
            "flops_saved": 1 - at_stop / full if full else 0.0,
        }
    return out


def early_stop_tables(payload: dict[str, Any]) -> str:
    """Early stopping side by side: work, speed and answers per setting, then the ratios to
    the full search and what shadow mode saw."""
    sessions = payload["sessions"]
    flat = []
    for s in sessions:
        ok = [t for t in s["early_stops"] if "error" not in t]
        ends = [t["ended"] for t in ok]
        flat.append(
            {
                "side": s["side"],
                "ppm": s["problems_per_minute"],
                "p50": s["latency_p50_s"],
                "p95": s["latency_p95_s"],
                "tflops": s["trees"]["flops_executed"] / max(s["trees"]["ok"], 1) / 1e12,
                "acc": s.get("accuracy"),
                "early": sum(e in ("decided", "confident") for e in ends) / max(len(ends), 1),
            }
        )
    columns = [  # (key, header, digits)
        ("tflops", "TFLOPs / problem", 4), ("ppm", "problems/min", 2),
        ("p50", "p50 latency (s)", 1), ("p95", "p95 latency (s)", 1),
        ("early", "trees stopped early", 2), ("acc", "accuracy", 3),
    ]  # fmt: skip
    spreads = {key: by_side(flat, key) for key, _, _ in columns}
    labels = {s["side"]: _early_stop_label(s.get("early_stop")) for s in sessions}
    rows = [
        [side, labels[side]] + [fmt_spread(spreads[k][side], d) for k, _, d in columns]
        for side in spreads["ppm"]
    ]
    header = ["config", "early stop"] + [title for _, title, _ in columns]
    lines = []
    off = next((side for side, label in labels.items() if label.startswith("off")), None)
    for side in spreads["ppm"]:
        if off is None or side == off:
            continue
        med = lambda k, x: spreads[k][x]["median"]  # noqa: E731
        agree = _answer_agreement(sessions, side, off)
        lines.append(
            f"- {side} / {off}: FLOPs per problem {_ratio(med('tflops', side), med('tflops', off))}"
            f", problems/min {_ratio(med('ppm', side), med('ppm', off))}, p50 "
            f"{_ratio(med('p50', side), med('p50', off))}, p95 "
            f"{_ratio(med('p95', side), med('p95', off))}; same answer as the full search of "
            f"the same round on {agree}"
        )
    for rule, v in shadow_summary(sessions).items():
        lines.append(
            f"- shadow `{rule}` (inside the full searches, {v['trees']} trees): fired on "
            f"{v['fired']:.0%}, answer identical on {v['agreement']:.1%}, FLOPs not yet "
            f"spent by its stop point {v['flops_saved']:.1%} (the full search runs a level's "
            "children together: an upper bound of what a stop saves without windows, since "
            "the steps in flight then had mostly run)"
        )
    dataset = {s.get("dataset", "gsm8k") for s in sessions}
    load = {s.get("load", "closed") for s in sessions}
    lines.append(f"- workload: {', '.join(sorted(dataset))}, {', '.join(sorted(load))} loop")
    if load == {"open"}:
        lines.append(f"- Poisson arrivals, {payload['settings'].get('arrival_rate')} requests/s")
    if (checked := accounting.sessions_line(sessions)) is not None:
        lines.append(checked)
    return markdown_table(header, rows) + "\n\n" + "\n".join(lines)


def _answer_agreement(sessions: list[dict[str, Any]], side: str, off: str) -> str:
    """Per question, `side`'s answer against the full search's in the same round. Separate
    runs: batch composition changes CPU numerics, so a difference here is not the rule's."""
    same = total = 0
    for s in sessions:
        if s["side"] != side:
            continue
        ref = next((r for r in sessions if r["side"] == off and r["round"] == s["round"]), None)
        if ref is None:
            continue
        answers = {t["question"]: t.get("answer") for t in ref["early_stops"]}
        for t in s["early_stops"]:
            total += 1
            same += _same(t.get("answer"), answers.get(t["question"]))
    return f"{same}/{total} trees" if total else "–"


def tables(payload: dict[str, Any]) -> dict[str, str]:
    """Named Markdown tables for docs/benchmarks.md."""
    sessions = payload["sessions"]
    if payload["benchmark"] == "rebase_throughput" and any(s.get("early_stop") for s in sessions):
        table = early_stop_tables(payload)
        return dict.fromkeys(EARLY_STOP_TABLES, table)
    if payload["benchmark"] == "rebase_hf":
        rows = []
        for side, s in by_side(sessions, "seconds_per_question").items():
            tok = by_side(sessions, "generated_tokens")[side]
            rate = by_side(sessions, "generated_tokens_per_s")[side]
            rows.append([side, fmt_spread(s, 1), fmt_spread(tok, 0), fmt_spread(rate, 1)])
        header = ["side", "s / question", "generated tokens", "generated tok/s"]
        ratio = _ratio(
            _median(payload, "gateway", "generated_tokens_per_s"),
            _median(payload, "hf", "generated_tokens_per_s"),
        )
        text = (
            markdown_table(header, rows) + f"\n\nGenerated tokens per second, gateway / HF: {ratio}"
        )
        return {"rebase_hf": text}
    flat = [
        {
            "side": s["side"],
            "ppm": s["problems_per_minute"],
            "p50": s.get("latency_p50_s"),
            "p95": s.get("latency_p95_s"),
            "hits": s["trees"]["cache_hit_fraction"],
            "vllm_hits": s["engine_cache_hit_fraction"],
            "pre": s["engine_counters"]["vllm:num_preemptions_total"],
            "occ": s.get("occupancy"),
            "acc": s.get("accuracy"),
            "tflops": s["trees"]["flops_executed"] / max(s["trees"]["ok"], 1) / 1e12,
        }
        for s in sessions
    ]
    columns = [  # (key, header, digits)
        ("ppm", "problems/min", 2), ("p50", "p50 latency (s)", 1), ("p95", "p95 latency (s)", 1),
        ("pre", "preemptions", 0), ("hits", "cache hits (usage)", 3),
        ("vllm_hits", "cache hits (vLLM)", 3), ("occ", "batch occupancy", 2),
        ("acc", "accuracy", 3), ("tflops", "TFLOPs / question", 4),
    ]  # fmt: skip
    spreads = {key: by_side(flat, key) for key, _, _ in columns}
    rows = [
        [side] + [fmt_spread(spreads[key][side], digits) for key, _, digits in columns]
        for side in spreads["ppm"]
    ]
    header = ["config"] + [title for _, title, _ in columns]
    med = {side: s["median"] for side, s in spreads["ppm"].items()}
    p50 = {side: s["median"] for side, s in spreads["p50"].items()}
    lines = []
    for c in med:
        sched, n = parse_config(c)
        for base in ("direct", "fair"):
            if sched != base and sched != "direct" and f"{base}{n}" in med:
                b = f"{base}{n}"
                lines.append(
                    f"- scheduler, {c} / {b}: problems/min {_ratio(med[c], med[b])}, "
                    f"p50 latency {_ratio(p50[c], p50[b])}"
                )
        if n > 1 and f"{sched}1" in med:
            lines.append(f"- batching, {c} / {sched}1: {_ratio(med[c], med[f'{sched}1'])}")
    load = {s.get("load", "closed") for s in sessions}
    if load == {"open"}:
        rate = payload.get("settings", {}).get("arrival_rate")
        lines.append(f"- open loop: Poisson arrivals, {rate} requests/s")
    if (checked := accounting.sessions_line(sessions)) is not None:
        lines.append(checked)
    table = markdown_table(header, rows) + "\n\n" + "\n".join(lines)
    # Also under the names of the scheduler comparisons' own result files (loadtest/docs.py).
    out = {
        name: table
        for name in (
            "rebase_throughput",
            "rebase_scheduler",
            "rebase_scheduler_share0",
            "rebase_open_loop",
        )
    }
    bon = next((s["best_of_n"] for s in sessions if "best_of_n" in s), None)
    if bon:
        tot = {
            f"{side}_{k}": sum(f[k] for f in bon[f"{side}_flops"])
            for side in ("rebase", "best_of_n")
            for k in ("executed", "nominal")
        }
        out["rebase_flops"] = markdown_table(
            ["FLOPs per question", "REBASE", "best-of-n (n = leaves)", "REBASE / best-of-n"],
            [
                [
                    k,
                    f"{tot[f'rebase_{k}'] / len(bon['n']) / 1e12:.4g} T",
                    f"{tot[f'best_of_n_{k}'] / len(bon['n']) / 1e12:.4g} T",
                    _ratio(tot[f"rebase_{k}"], tot[f"best_of_n_{k}"]),
                ]
                for k in ("executed", "nominal")
            ],
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["throughput", "hf"])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--configs", default="fair8,direct8,fair1", help="SCHEDULERn,...")
    p.add_argument("--arrival-rate", type=float, default=None, help="open loop: Poisson requests/s")
    p.add_argument("--max-num-seqs", type=int, default=64, help="the engine's batch size")
    p.add_argument("--max-in-flight", type=int, default=None, help="gateway --rebase-max-in-flight")
    p.add_argument("--sample-s", type=float, default=1.0, help="occupancy sampling period")
    p.add_argument("--best-of-n", action="store_true")
    p.add_argument(
        "--dataset",
        choices=["gsm8k", "easy_arithmetic"],
        default="gsm8k",
        help="easy_arithmetic: single-digit sums a small model agrees on (loadtest/harness)",
    )
    args = p.parse_args(argv)
    run = throughput if args.phase == "throughput" else hf
    payload = cli.run_benchmark(f"rebase_{args.phase}", args, lambda save: run(args, save))
    print("\n\n".join(dict.fromkeys(tables(payload).values())))  # aliases share a table


if __name__ == "__main__":
    main()
