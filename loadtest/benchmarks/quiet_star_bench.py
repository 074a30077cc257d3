"""Quiet-STaR benchmarks (GitHub issue 4): what one thought costs, how fast, and what it says.

Four benchmarks, one subcommand each; every one prints Markdown tables and writes JSON to --out:

* ``forward``: forward positions per output token against the ideal ``t + 3`` (one engine
  request per output token: start, t thoughts, end, talk), from the gateway's usage *and* from
  vLLM's own counters (``/metrics`` before/after), next to the analytic expectation of what the
  prefix cache cannot serve (the prompt tail after the last full KV block).
* ``speed``: wall seconds per output token, gateway vs a straightforward Hugging Face
  implementation (``hf_quiet_star``), same model, same t and w, float32, same machine; the
  gateway at concurrency 8 and 1, HF one request at a time with the gateway **stopped**.
* ``methods``: baseline, rebase, quiet_star, quiet_star+rebase (every_token and step_start) on
  the same GSM8K questions at concurrency 8: seconds, FLOPs, thought tokens, engine calls.
* ``coherence``: greedy text of quiet_star for several mixing weights against baseline greedy.

Each starts its own gateway (the benchmark engine settings of ``processes.EngineSettings``:
float32, block 32, 4 GiB KV cache) unless ``--url`` points at a running one.

    python -m loadtest.benchmarks.quiet_star_bench forward --out results/qs_forward.json
    python -m loadtest.benchmarks.quiet_star_bench speed --out results/qs_speed.json
    python -m loadtest.benchmarks.quiet_star_bench methods --out results/qs_methods.json
    python -m loadtest.benchmarks.quiet_star_bench coherence --out results/qs_coherence.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from loadtest.benchmarks.gsm8k import DEFAULT_TEST_FILE, Question, load_questions
from loadtest.benchmarks.processes import (
    DEFAULT_MODEL,
    DEFAULT_NAME,
    EngineSettings,
    scrape_metrics,
    start_gateway,
)
from loadtest.benchmarks.tables import fmt, machine, markdown_table, median, write_json
from server.answers import answers_match, extract_answer

SINGLE_TOKEN_DELIMITERS = "<|im_start|>,<|im_end|>"  # one token each in SmolLM2 (and tiny)


# -- HTTP -------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One request's response and its wall time."""

    key: str
    ok: bool
    latency_s: float
    text: str = ""
    usage: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    error: str | None = None


async def _post(client: httpx.AsyncClient, url: str, key: str, body: dict) -> Reply:
    start = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/completions", json=body)
    except httpx.HTTPError as exc:
        return Reply(key, False, time.perf_counter() - start, error=repr(exc))
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Reply(key, False, latency, error=response.text[:500])
    data = response.json()
    return Reply(
        key,
        True,
        latency,
        data["choices"][0]["text"],
        data["usage"],
        data.get("method_details") or {},
    )


async def _closed_loop(
    url: str, jobs: Sequence[tuple[str, dict]], concurrency: int
) -> tuple[float, list[Reply]]:
    """Send every body, at most ``concurrency`` at a time; (wall seconds, replies in order)."""
    queue = list(enumerate(jobs))[::-1]
    replies: list[Reply | None] = [None] * len(jobs)
    async with httpx.AsyncClient(timeout=1800) as client:

        async def worker() -> None:
            while queue:
                i, (key, body) = queue.pop()
                replies[i] = await _post(client, url, key, body)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return wall, [r for r in replies if r is not None]


def closed_loop(url: str, jobs: Sequence[tuple[str, dict]], concurrency: int):
    wall, replies = asyncio.run(_closed_loop(url, jobs, concurrency))
    failed = [r for r in replies if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error}")
    return wall, replies


@dataclass
class Gateway:
    url: str
    model: str
    started_here: bool
    started_in_s: float = 0.0


@contextlib.contextmanager
def gateway(args: argparse.Namespace, tag: str) -> Iterator[Gateway]:
    """A running gateway: ``--url``'s, or one started here and stopped on exit."""
    if args.url:
        name = httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]["id"]
        yield Gateway(args.url, name, started_here=False)
        return
    engine = EngineSettings(model=args.model, served_name=args.served_model_name, dtype=args.dtype)
    logs = args.out.parent / "quiet_star_bench_logs"
    with start_gateway(engine, logs / f"{tag}-gateway.log") as server:
        print(f"[{tag}] gateway healthy after {server.started_in_s:.0f}s", flush=True)
        yield Gateway(server.url, engine.served_name, True, server.started_in_s)


def delimiter_block(spec: str) -> dict:
    """'default' -> {} (the gateway's choice); 'A,B' -> start_token A, end_token B."""
    if spec == "default":
        return {}
    start, end = spec.split(",", 1)
    return {"start_token": start, "end_token": end}


# -- 1. forward positions per output token ----------------------------------------------------
VLLM_COUNTERS = {
    "prompt": ("vllm:prompt_tokens_total", None),
    "computed": ("vllm:prompt_tokens_by_source_total", 'source="local_compute"'),
    "hits": ("vllm:prefix_cache_hits_total", None),
    "cached": ("vllm:prompt_tokens_cached_total", None),
    "generated": ("vllm:generation_tokens_total", None),
    "requests": ("vllm:request_success_total", None),
}


def vllm_counters(url: str) -> dict[str, float]:
    samples = scrape_metrics(url)
    out = {}
    for key, (name, label) in VLLM_COUNTERS.items():
        out[key] = sum(
            v
            for k, v in samples.items()
            if (k == name or k.startswith(name + "{")) and (label is None or label in k)
        )
    return out


def uncached_tail(context_len: int, block: int) -> int:
    """Prompt positions one engine call must compute when everything before it is cached.

    vLLM looks a prompt up in the prefix cache only up to its second-to-last token (the last
    one must run to give logits) and only in whole blocks, so the call recomputes
    ``L - block * floor((L - 1) / block)`` positions: 1 .. block."""
    return context_len - block * ((context_len - 1) // block)


def expected_forward(prompt_len: int, calls: int, steps: int, block: int) -> int:
    """Positions a Quiet-STaR request runs: per call the uncached tail of its context (prompt +
    talk tokens so far), plus ``steps - 1`` decode positions (the last sampled token never
    runs). Assumes the prompt itself was cached (the benchmark warms it first)."""
    return sum(uncached_tail(prompt_len + k, block) + steps - 1 for k in range(calls))


def bench_forward(args: argparse.Namespace) -> dict:
    questions = load_questions(args.data, args.questions)
    configs = [("baseline", None, "default")] + [
        ("quiet_star", t, d) for d in args.delimiters for t in args.thought_tokens
    ]
    rows = []
    with gateway(args, "forward") as gw:
        warm = [
            (f"warm{q.index}", _body(gw.model, q.prompt, 1, temperature=0.0)) for q in questions
        ]
        closed_loop(gw.url, warm, 1)  # every prompt's full blocks now sit in the prefix cache
        for c, (method, t, delims) in enumerate(configs):
            jobs = []
            for q in questions:
                body = _body(
                    gw.model, q.prompt, args.max_tokens, seed=1000 * c + q.index, ignore_eos=True
                )
                if method == "quiet_star":
                    body["method"] = "quiet_star"
                    body["quiet_star"] = {
                        "thought_tokens": t,
                        "mixing_weight": args.mixing_weight,
                        **delimiter_block(delims),
                    }
                jobs.append((f"q{q.index}", body))
            before = vllm_counters(gw.url)
            _, replies = closed_loop(gw.url, jobs, 1)  # one at a time: counters attribute cleanly
            time.sleep(1.5)  # vLLM publishes its counters with the next stats tick
            after = vllm_counters(gw.url)
            delta = {k: after[k] - before[k] for k in after}
            rows.append(_forward_row(method, t, delims, replies, delta, args.block_size))
            r = rows[-1]
            print(
                f"[forward] {method} t={t} delims={delims}: {r['forward_per_token']:.2f} fwd/token "
                f"(vLLM {r['vllm_forward_per_token']:.2f}, expected {r['expected_per_token']:.2f}"
                f", ideal {r['ideal_per_token']})",
                flush=True,
            )
    return {"rows": rows, "markdown": _forward_table(rows)}


def _forward_row(method, t, delims, replies: list[Reply], delta: dict, block: int) -> dict:
    u = [r.usage for r in replies]
    completion = sum(x["completion_tokens"] for x in u)
    forward = sum(x["forward_tokens"] for x in u)
    calls = sum(x["engine_calls"] for x in u)
    if method == "quiet_star":
        steps = round(u[0]["thought_tokens"] / u[0]["engine_calls"]) + 1
        expected = sum(
            expected_forward(x["prompt_tokens"], x["engine_calls"], steps, block) for x in u
        )
        ideal = steps
    else:
        steps = None
        # one call: the prompt tail after the cached blocks, then max_tokens - 1 decodes
        expected = sum(
            uncached_tail(x["prompt_tokens"], block) + x["completion_tokens"] - 1 for x in u
        )
        ideal = 1
    # vLLM's view: computed prompt positions + generated tokens that were fed back
    vllm_forward = delta["computed"] + delta["generated"] - delta["requests"]
    per_request = [x["forward_tokens"] / x["completion_tokens"] for x in u]
    return {
        "method": method,
        "thought_tokens": t,
        "delimiters": delims,
        "steps_per_call": steps,
        "requests": len(replies),
        "prompt_tokens": [x["prompt_tokens"] for x in u],
        "completion_tokens": completion,
        "engine_calls": calls,
        "forward_tokens": forward,
        "cached_tokens": sum(x["cached_tokens"] for x in u),
        "forward_per_token": forward / completion,
        "median_forward_per_token": median(per_request),
        "vllm": delta,
        "vllm_forward": vllm_forward,
        "vllm_forward_per_token": vllm_forward / completion,
        "vllm_cached_per_call": delta["cached"] / max(delta["requests"], 1),
        "expected_forward": expected,
        "expected_per_token": expected / completion,
        "ideal_per_token": ideal,
        "remainder_per_token": forward / completion - ideal,
    }


def _forward_table(rows: list[dict]) -> str:
    header = [
        "method",
        "t",
        "delimiters",
        "steps/call (ideal fwd/token)",
        "fwd/token (usage, all)",
        "median per request",
        "fwd/token (vLLM counters)",
        "expected (analytic)",
        "remainder over ideal",
        "prompt tok recomputed per call",
    ]
    body = []
    for r in rows:
        calls = max(r["engine_calls"], 1)
        body.append(
            [
                r["method"],
                r["thought_tokens"] if r["thought_tokens"] is not None else "–",
                _cell(r["delimiters"]),
                r["ideal_per_token"],
                fmt(r["forward_per_token"]),
                fmt(r["median_forward_per_token"]),
                fmt(r["vllm_forward_per_token"]),
                fmt(r["expected_per_token"]),
                fmt(r["remainder_per_token"]),
                fmt(r["vllm"]["computed"] / calls, 1),
            ]
        )
    return markdown_table(header, body)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _body(model: str, prompt: str, max_tokens: int, **extra) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": extra.pop("temperature", 1.0),
        "method": "baseline",
        **extra,
    }


# -- 2. wall time per output token vs Hugging Face --------------------------------------------
def bench_speed(args: argparse.Namespace) -> dict:
    from loadtest.benchmarks import hf_quiet_star

    questions = load_questions(args.data, args.questions)
    check = questions[: args.check_questions]

    def jobs(
        model: str,
        qs: Sequence[Question],
        max_tokens: int,
        delims: str | None,
        temperature: float = 1.0,
        **qs_over,
    ) -> list[tuple[str, dict]]:
        """Quiet-STaR bodies with delimiters ``delims``; ``None``: plain baseline decoding."""
        out = []
        for q in qs:
            body = _body(
                model, q.prompt, max_tokens, seed=q.index, ignore_eos=True, temperature=temperature
            )
            if delims is not None:
                body["method"] = "quiet_star"
                body["quiet_star"] = {
                    "thought_tokens": args.t,
                    "mixing_weight": args.mixing_weight,
                    **delimiter_block(delims),
                    **qs_over,
                }
            out.append((f"q{q.index}", body))
        return out

    gateway_runs: list[dict] = []
    check_replies: dict[str, list[Reply]] = {}
    with gateway(args, "speed") as gw:
        closed_loop(gw.url, jobs(gw.model, questions[:2], 4, args.delimiters[0]), 2)  # warm-up
        for delims in [*args.delimiters, None]:
            for conc in args.concurrency:
                qs = questions if conc > 1 else questions[: args.c1_questions]
                bodies = jobs(gw.model, qs, args.max_tokens, delims)
                wall, replies = closed_loop(gw.url, bodies, conc)
                gateway_runs.append(_speed_run(delims, conc, qs, wall, replies))
                print(
                    f"[speed] gateway {delims or 'baseline'} c={conc}: "
                    f"{gateway_runs[-1]['seconds_per_token']:.4f} s/token",
                    flush=True,
                )
        # greedy talk, near-greedy thoughts: both implementations should pick the same tokens
        bodies = jobs(
            gw.model,
            check,
            args.check_tokens,
            args.delimiters[0],
            temperature=0.0,
            thought_temperature=0.01,
            return_thoughts=True,
        )
        _, check_replies = closed_loop(gw.url, bodies, len(bodies))
        started_here = gw.started_here
    # The gateway is stopped here (or idle, with --url): HF has the machine to itself.
    hf_runs = []
    prompts = [q.prompt for q in questions]
    for i, delims in enumerate(args.delimiters if args.hf else []):
        settings = hf_quiet_star.QuietStarSettings(
            thought_tokens=args.t, mixing_weight=args.mixing_weight, **delimiter_block(delims)
        )
        hf = hf_quiet_star.run(
            args.model, prompts, settings, args.max_tokens, cache=args.hf_cache, plain=i == 0
        )
        hf_runs.append({"delimiters": delims, **hf})
        print(f"[speed] HF {delims}: {hf['seconds_per_token']:.4f} s/token", flush=True)
        if args.hf_none_questions:
            none = hf_quiet_star.run(
                args.model,
                prompts[: args.hf_none_questions],
                settings,
                args.max_tokens,
                cache="none",
                plain=False,
            )
            hf_runs.append({"delimiters": delims, **none})
            print(f"[speed] HF {delims} no cache: {none['seconds_per_token']:.4f} s/token")
    result = {
        "gateway_started_here": started_here,
        "gateway": gateway_runs,
        "hf": hf_runs,
        "check": _agreement_check(args, check, check_replies) if args.hf else None,
    }
    result["markdown"] = _speed_table(result)
    return result


def _speed_run(delims, conc, qs, wall, replies: list[Reply]) -> dict:
    tokens = sum(r.usage["completion_tokens"] for r in replies)
    # concurrency 1 runs one request after another: its wall time is the sum of latencies
    per_token = wall / tokens
    return {
        "delimiters": delims,
        "method": "baseline" if delims is None else "quiet_star",
        "concurrency": conc,
        "questions": len(qs),
        "wall_s": wall,
        "output_tokens": tokens,
        "seconds_per_token": per_token,
        "median_latency_s": median([r.latency_s for r in replies]),
        "median_request_seconds_per_token": median(
            [r.latency_s / r.usage["completion_tokens"] for r in replies]
        ),
        "forward_per_token": sum(r.usage["forward_tokens"] for r in replies) / tokens,
        "engine_calls": sum(r.usage["engine_calls"] for r in replies),
        "steps_per_token": (
            sum(r.usage["thought_tokens"] for r in replies) / tokens + 1 if delims else 1
        ),
    }


def _agreement_check(args, check: Sequence[Question], replies: list[Reply]) -> dict:
    """Greedy talk + thought temperature 0.01 on both sides: how many tokens agree."""
    from loadtest.benchmarks import hf_quiet_star

    settings = hf_quiet_star.QuietStarSettings(
        thought_tokens=args.t,
        mixing_weight=args.mixing_weight,
        thought_temperature=0.01,
        temperature=0.0,
        **delimiter_block(args.delimiters[0]),
    )
    hf = hf_quiet_star.HFQuietStar(args.model, settings)
    rows = []
    for q, r in zip(check, replies, strict=True):
        seq = hf.generate(q.prompt, args.check_tokens, seed=q.index)
        steps = r.details["quiet_star"][0]["step_token_ids"]
        ids = [step[-1] for step in steps]  # each engine call's last token is the talk token
        thoughts = [step[:-1] for step in steps]
        rows.append(
            {
                "question": q.index,
                "gateway": r.text,
                "hf": seq.text,
                "common_prefix": _common_prefix(ids, seq.token_ids),
                "same_text": r.text == seq.text,
                "gateway_token_ids": ids,
                "hf_token_ids": seq.token_ids,
                "thoughts_identical": sum(
                    a[len(hf.start_ids) : len(hf.start_ids) + args.t] == b
                    for a, b in zip(thoughts, seq.thoughts, strict=False)
                ),
            }
        )
    return {"delimiters": args.delimiters[0], "tokens": args.check_tokens, "rows": rows}


def _speed_table(r: dict) -> str:
    header = [
        "implementation",
        "delimiters",
        "engine steps / token",
        "concurrency",
        "requests",
        "output tok",
        "s / output token",
        "HF (thought cache) / this",
    ]
    hf_ref = {h["delimiters"]: h for h in r["hf"] if h["cache"] == "thought"}
    rows = []
    for h in r["hf"]:
        ref = hf_ref.get(h["delimiters"])
        steps = (
            len(h["start_token_ids"]) + h["settings"]["thought_tokens"] + len(h["end_token_ids"])
        )
        first = h["sequences"][0]
        calls = first["model_calls"] // max(len(first["token_ids"]), 1)
        rows.append(
            [
                f"HF transformers ({h['cache']} cache)",
                _cell(h["delimiters"]),
                f"{steps + 1} ({calls} model calls)",
                "1 (one after another)",
                len(h["sequences"]),
                h["output_tokens"],
                fmt(h["seconds_per_token"], 4),
                fmt(ref["seconds_per_token"] / h["seconds_per_token"], 2) + "x" if ref else "–",
            ]
        )
    for g in r["gateway"]:
        ref = hf_ref.get(g["delimiters"])
        rows.append(
            [
                f"gateway {g['method']}",
                _cell(g["delimiters"] or "–"),
                fmt(g["steps_per_token"], 0),
                g["concurrency"],
                g["questions"],
                g["output_tokens"],
                fmt(g["seconds_per_token"], 4),
                fmt(ref["seconds_per_token"] / g["seconds_per_token"], 1) + "x" if ref else "–",
            ]
        )
    plain = [h for h in r["hf"] if h.get("plain_seconds_per_token")]
    if plain:
        rows.append(
            ["HF generate, base model, no thought", "–", 1, 1, 2, "–",
             fmt(plain[0]["plain_seconds_per_token"], 4), "–"]
        )  # fmt: skip
    if r["check"] is None:
        return markdown_table(header, rows)
    check = "\n".join(
        f"- q{c['question']}: {c['common_prefix']}/{r['check']['tokens']} talk tokens identical "
        f"before the first difference; {c['thoughts_identical']} of the thoughts identical; "
        f"same text: {c['same_text']}"
        for c in r["check"]["rows"]
    )
    return (
        markdown_table(header, rows)
        + f"\n\nGreedy agreement check, gateway vs HF ({r['check']['delimiters']}):\n"
        + check
    )


# -- 3. methods side by side ------------------------------------------------------------------
def method_configs(args: argparse.Namespace) -> list[tuple[str, dict]]:
    rebase = {
        "width": args.width,
        "max_step_tokens": args.max_step_tokens,
        "step_delimiter": "\n",
    }
    qs = {"thought_tokens": args.t, "mixing_weight": args.mixing_weight}
    configs = {
        "baseline": {"method": "baseline"},
        "rebase": {"method": "rebase", "rebase": rebase},
        "quiet_star": {"method": "quiet_star", "quiet_star": {**qs, "think": "every_token"}},
        "quiet_star+rebase (every_token)": {
            "method": "quiet_star+rebase",
            "rebase": rebase,
            "quiet_star": {**qs, "think": "every_token"},
        },
        "quiet_star+rebase (step_start)": {
            "method": "quiet_star+rebase",
            "rebase": rebase,
            "quiet_star": {**qs, "think": "step_start"},
        },
    }
    return [(name, configs[name]) for name in args.configs]


def bench_methods(args: argparse.Namespace) -> dict:
    questions = load_questions(args.data, args.questions)
    runs = []
    with gateway(args, "methods") as gw:
        closed_loop(gw.url, [("warm", _body(gw.model, questions[0].prompt, 4))], 1)
        for name, extra in method_configs(args):
            jobs = []
            for q in questions:
                body = _body(gw.model, q.prompt, args.max_tokens, seed=args.seed + q.index)
                jobs.append((f"q{q.index}", {**body, **extra}))
            wall, replies = closed_loop(gw.url, jobs, args.concurrency)
            runs.append(_method_row(name, extra, questions, wall, replies))
            runs[-1]["concurrency"] = args.concurrency
            print(
                f"[methods] {name}: {wall:.1f}s total, "
                f"{runs[-1]['flops_executed_per_q'] / 1e9:.1f} GFLOPs/q",
                flush=True,
            )
    return {"runs": runs, "markdown": _methods_table(runs)}


def _method_row(name, extra, questions, wall, replies: list[Reply]) -> dict:
    n = len(replies)

    def mean(key):
        return sum(r.usage[key] for r in replies) / n

    correct = sum(
        answers_match(extract_answer(r.text), q.answer)
        for q, r in zip(questions, replies, strict=True)
    )
    return {
        "config": name,
        "body": extra,
        "questions": n,
        "wall_s": wall,
        "seconds_per_question": wall / n,
        "median_latency_s": median([r.latency_s for r in replies]),
        "flops_executed_per_q": sum(r.usage["flops"]["executed"] for r in replies) / n,
        "flops_nominal_per_q": sum(r.usage["flops"]["nominal"] for r in replies) / n,
        "completion_tokens_per_q": mean("completion_tokens"),
        "thought_tokens_per_q": mean("thought_tokens"),
        "forward_tokens_per_q": mean("forward_tokens"),
        "engine_calls_per_q": mean("engine_calls"),
        "correct": correct,
        "accuracy": correct / n,
        "replies": [asdict(r) for r in replies],
    }


def _methods_table(runs: list[dict]) -> str:
    header = [
        "config",
        f"total s (c={runs[0]['concurrency'] if runs else '?'})",
        "s / question",
        "median latency s",
        "GFLOPs executed / q",
        "GFLOPs nominal / q",
        "completion tok / q",
        "thought tok / q",
        "forward tok / q",
        "engine calls / q",
        "accuracy",
    ]
    rows = [
        [
            r["config"],
            fmt(r["wall_s"], 1),
            fmt(r["seconds_per_question"], 2),
            fmt(r["median_latency_s"], 1),
            fmt(r["flops_executed_per_q"] / 1e9, 1),
            fmt(r["flops_nominal_per_q"] / 1e9, 1),
            fmt(r["completion_tokens_per_q"], 1),
            fmt(r["thought_tokens_per_q"], 0),
            fmt(r["forward_tokens_per_q"], 0),
            fmt(r["engine_calls_per_q"], 1),
            f"{r['correct']}/{r['questions']}",
        ]
        for r in runs
    ]
    return markdown_table(header, rows)


# -- 4. coherence of the mixing weight --------------------------------------------------------
def bench_coherence(args: argparse.Namespace) -> dict:
    questions = load_questions(args.data, args.questions)
    configs: list[tuple[str, dict]] = [("baseline", {"method": "baseline"})]
    for delims in args.delimiters:
        weights = args.weights if delims == args.delimiters[0] else args.extra_delimiter_weights
        for w in weights:
            block = {"thought_tokens": args.t, "mixing_weight": w, **delimiter_block(delims)}
            configs.append((f"w={w} {delims}", {"method": "quiet_star", "quiet_star": block}))
    texts: dict[str, list[str]] = {}
    with gateway(args, "coherence") as gw:
        for name, extra in configs:
            jobs = []
            for q in questions:
                body = _body(
                    gw.model, q.prompt, args.max_tokens, temperature=0.0, seed=args.seed + q.index
                )
                jobs.append((f"q{q.index}", {**body, **extra}))
            _, replies = closed_loop(gw.url, jobs, len(jobs))
            texts[name] = [r.text for r in replies]
            print(f"[coherence] {name}: {texts[name][0][:80]!r}", flush=True)
    scorer = _Scorer(args.model)
    rows = []
    for name, _extra in configs:
        agree, prefix, nll, lengths, exact = [], [], [], [], 0
        for q, text, base in zip(questions, texts[name], texts["baseline"], strict=True):
            a, b = scorer.ids(text), scorer.ids(base)
            agree.append(sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), len(b), 1))
            prefix.append(_common_prefix(a, b))
            lengths.append(len(a))
            if a:
                nll.append(scorer.nll(q.prompt, text))
            exact += text == base
        rows.append(
            {
                "config": name,
                "identical_to_baseline": f"{exact}/{len(questions)}",
                "same_position_tokens": sum(agree) / len(agree),
                "median_common_prefix": median(prefix),
                "mean_output_tokens": sum(lengths) / len(lengths),
                "mean_nll": sum(nll) / len(nll) if nll else float("nan"),
                "texts": texts[name],
            }
        )
    return {"rows": rows, "markdown": _coherence_table(rows, args.sample_chars)}


class _Scorer:
    """The model's own tokenizer (to compare token by token) and its mean NLL of a text
    given the prompt (a crude coherence score: how unlikely the base model finds it)."""

    def __init__(self, model_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(2)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def nll(self, prompt: str, text: str) -> float:
        p, c = self.ids(prompt), self.ids(text)
        if not c:
            return float("nan")
        with self.torch.inference_mode():
            logits = self.model(input_ids=self.torch.tensor([p + c])).logits[0, len(p) - 1 : -1]
            logp = self.torch.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(1, self.torch.tensor(c).view(-1, 1))
        return float(-picked.mean())


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _coherence_table(rows: list[dict], chars: int) -> str:
    header = [
        "config",
        "text == baseline",
        "tokens same as baseline (same position)",
        "median common prefix (tokens)",
        "mean output tokens",
        "mean NLL under base model",
        "sample (question 1)",
    ]
    body = [
        [
            _cell(r["config"]),
            r["identical_to_baseline"],
            fmt(r["same_position_tokens"]),
            fmt(r["median_common_prefix"], 1),
            fmt(r["mean_output_tokens"], 1),
            fmt(r["mean_nll"]),
            "`" + _cell(r["texts"][0][:chars].replace("\n", "⏎")) + "`",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


# -- CLI --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=DEFAULT_MODEL)
    common.add_argument("--served-model-name", default=DEFAULT_NAME)
    common.add_argument("--url", default=None, help="a running gateway (default: start one)")
    common.add_argument("--data", type=Path, default=DEFAULT_TEST_FILE)
    common.add_argument("--dtype", default="float32", help="engine dtype of a gateway started here")
    common.add_argument("--mixing-weight", type=float, default=0.3)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--out", type=Path, required=True)
    sub = parser.add_subparsers(dest="benchmark", required=True)

    p = sub.add_parser("forward", parents=[common], help="forward positions per output token")
    p.add_argument("--thought-tokens", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--delimiters", nargs="+", default=[SINGLE_TOKEN_DELIMITERS, "default"])
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--block-size", type=int, default=32, help="the engine's (for the analysis)")

    p = sub.add_parser("speed", parents=[common], help="seconds per output token vs HF")
    p.add_argument("--t", type=int, default=4)
    p.add_argument("--delimiters", nargs="+", default=["default", SINGLE_TOKEN_DELIMITERS])
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--c1-questions", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 1])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--hf-cache", choices=["thought", "none"], default="thought")
    p.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the HF implementation too (--no-hf: the gateway's runs only)",
    )
    p.add_argument(
        "--hf-none-questions", type=int, default=0, help="also time HF without any KV cache"
    )
    p.add_argument("--check-questions", type=int, default=2)
    p.add_argument("--check-tokens", type=int, default=16)

    p = sub.add_parser("methods", parents=[common], help="five configs on GSM8K, concurrency 8")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--t", type=int, default=4)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--max-step-tokens", type=int, default=16)
    p.add_argument(
        "--configs",
        nargs="+",
        default=[
            "baseline",
            "rebase",
            "quiet_star",
            "quiet_star+rebase (every_token)",
            "quiet_star+rebase (step_start)",
        ],
    )

    p = sub.add_parser("coherence", parents=[common], help="greedy text vs mixing weight")
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--t", type=int, default=4)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 1.0])
    p.add_argument("--delimiters", nargs="+", default=["default", SINGLE_TOKEN_DELIMITERS])
    p.add_argument("--extra-delimiter-weights", type=float, nargs="+", default=[0.3, 1.0])
    p.add_argument("--sample-chars", type=int, default=70)

    args = parser.parse_args(argv)
    run = {
        "forward": bench_forward,
        "speed": bench_speed,
        "methods": bench_methods,
        "coherence": bench_coherence,
    }[args.benchmark]
    started = time.monotonic()
    result = run(args)
    print(result["markdown"])
    write_json(
        args.out,
        {
            "benchmark": f"quiet_star_{args.benchmark}",
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "wall_s": time.monotonic() - started,
            **result,
        },
    )


if __name__ == "__main__":
    main()
