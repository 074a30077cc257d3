"""Quiet-STaR benchmarks: what one thought costs, how fast, and what it does to the text.

* ``forward``: forward positions and engine steps per output token from vLLM's own counters
  against the analytic counts, for both gateway engines (``--quiet-star-engine``) and for
  one-token and the default delimiters: ``s + t + e + 1`` positions (``t + 3`` with one-token
  delimiters) for ``continuation``, one step each except forced runs of several tokens, which
  share the step before them (``continuation_steps``); the same plus the re-prefilled prompt
  tail per call, one step per round token, for ``per_token``.
* ``speed``: output tokens/s for t in {4, 8} x concurrency in {1, 8}: the gateway with the
  continuation engine and with the per-token engine, the HF lockstep loop with a cropped KV
  cache (batch = concurrency) and the HF no-cache loop (``hf_quiet_star``), each side alone on
  the machine, in alternating rounds, all with the same w and delimiters; and the bound the
  engine sets (``gateway:plain-bound``): plain decoding of as many tokens as the Quiet-STaR
  requests take engine steps, its tokens/s divided by the steps per output token (``t + 3``
  with one-token delimiters), i.e. what the continuation engine would reach if each of its
  steps cost no more than a plain decode step.
* ``methods``: baseline, rebase, quiet_star and quiet_star+rebase on the same questions in one
  gateway, configs in alternating order per round: seconds, FLOPs, thought tokens.
* ``coherence``: greedy quiet_star text for several mixing weights against baseline greedy,
  with the base model's NLL of each text (HF, after the gateway stopped).

    python -m loadtest.benchmarks.quiet_star_bench forward --out docs/data/quiet_star_forward.json
    python -m loadtest.benchmarks.quiet_star_bench speed --out docs/data/quiet_star_speed.json
    python -m loadtest.benchmarks.quiet_star_bench methods --out docs/data/quiet_star_methods.json
    python -m loadtest.benchmarks.quiet_star_bench coherence \
        --out docs/data/quiet_star_coherence.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from transformers import AutoTokenizer

from kernels.quiet_star.scheduler import MIN_FUSED_TOKENS
from loadtest.harness import accounting, cli
from loadtest.harness.driver import run_bodies
from loadtest.harness.metrics import metric_total
from loadtest.harness.provenance import adopt_sides, record_hf_side
from loadtest.harness.results import spread
from loadtest.harness.rounds import run_rounds
from loadtest.harness.servers import REPO, start_gateway
from loadtest.harness.tables import cell, fmt, fmt_spread, markdown_table
from server.core.answers import answers_match, extract_answer
from server.quiet_star.delimiters import resolve_delimiters

ONE_TOKEN_DELIMITERS = "<|im_start|>,<|im_end|>"  # one token each in SmolLM2 (and tiny)
ENGINES = ("continuation", "per_token")  # the gateway's --quiet-star-engine values
PLAIN_BOUND = "gateway:plain-bound"  # plain decoding tokens/s / steps per Quiet-STaR token


def delimiter_block(spec: str) -> dict[str, str]:
    """'default' -> {} (the gateway's choice); 'A,B' -> start_token A, end_token B."""
    if spec == "default":
        return {}
    start, end = spec.split(",", 1)
    return {"start_token": start, "end_token": end}


def body(model: str, prompt: str, max_tokens: int, qs: dict | None = None, **extra) -> dict:
    """A completion body; ``qs`` (a quiet_star block) makes it a Quiet-STaR request."""
    out = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0}
    out |= {"method": "quiet_star", "quiet_star": qs} if qs is not None else {"method": "baseline"}
    return out | extra


def gateway(args: argparse.Namespace, tag: str, *extra: str):
    return start_gateway(
        cli.engine_settings(args), cli.logs_dir(args) / f"{tag}.log", *extra, attempts=2
    )


def engine_flag(engine: str) -> tuple[str, str]:
    """The gateway flag that selects how quiet_star decodes (docs/quiet_star.md)."""
    return ("--quiet-star-engine", engine)


# -- forward positions per output token ------------------------------------------------------
def uncached_tail(context_len: int, block: int) -> int:
    """Prompt positions one engine call computes when everything before it is cached: vLLM
    looks a prompt up only to its second-to-last token and only in whole blocks."""
    return context_len - block * ((context_len - 1) // block)


def expected_forward(prompt_len: int, calls: int, steps: int, block: int) -> int:
    """Positions a per-token Quiet-STaR request runs: per call its uncached tail plus
    ``steps - 1`` decode positions (the last sampled token never runs)."""
    return sum(uncached_tail(prompt_len + k, block) + steps - 1 for k in range(calls))


def forward(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    """Forward positions and engine steps per output token, from vLLM's own counters, against
    the analytic counts, for each delimiter setting. Continuation: every output token runs
    exactly ``s + t + e + 1`` positions (the talk token or the prompt's last position, the
    start delimiter, t thoughts, the end delimiter; t + 3 with one-token delimiters), so vLLM's
    generation counter grows by that much per output token, in ``continuation_steps`` engine
    steps; the prompt is prefilled once (reported apart). Per-token:
    each engine call re-prefills its uncached prompt tail (``expected_forward``) and takes a
    step per round token. Steps are vLLM's iteration count (one per engine step with output;
    requests run one at a time)."""
    qs = cli.questions(args, args.questions)
    tokenizer = AutoTokenizer.from_pretrained(cli.engine_settings(args).model_path())
    rows = []
    for engine in args.engines:
        with gateway(args, f"forward-{engine}", *engine_flag(engine)) as gw:
            model = cli.engine_settings(args).name()
            run_bodies(gw.url, [body(model, q, 1, temperature=0.0) for _, q in qs], concurrency=1)
            for delimiters in dict.fromkeys(args.delimiters):
                sizes = delimiter_sizes(tokenizer, delimiters)
                for t in args.thought_tokens:
                    rows.append(_forward_row(args, gw.url, model, qs, engine, delimiters, sizes, t))
                    save({"rows": rows})
    return {"settings": _settings(args), "rows": rows}


def delimiter_sizes(tokenizer, delimiters: str) -> tuple[int, int]:
    """Tokens in the start and end delimiter, as the gateway resolves them."""
    block = delimiter_block(delimiters)
    start, end = resolve_delimiters(tokenizer, block.get("start_token"), block.get("end_token"))
    return len(start), len(end)


def continuation_steps(t: int, start: int, end: int) -> int:
    """Engine steps per output token on the continuation engine (t >= 1): one per sampled token
    (start[0] at the base row, t thoughts, the talk token), plus one per forced token that
    is not in a run of at least MIN_FUSED_TOKENS (such runs share the step before them)."""
    rest = start - 1
    return 2 + t + (rest if rest < MIN_FUSED_TOKENS else 0) + (end if end < MIN_FUSED_TOKENS else 0)


def _forward_row(
    args, url: str, model: str, qs, engine: str, delimiters: str, sizes: tuple[int, int], t: int
) -> dict:
    block = {"thought_tokens": t, "mixing_weight": args.mixing_weight}
    block |= delimiter_block(delimiters)
    bodies = [body(model, q, args.max_tokens, block, seed=p.index, ignore_eos=True) for p, q in qs]
    before = accounting.idle_samples(url)
    usages = [r.usage for r in run_bodies(url, bodies, concurrency=1).results]
    after = accounting.idle_samples(url)  # vLLM publishes its counters after the outputs
    checked = accounting.check(before, after)
    if checked["matches"] is False:
        print(accounting.report_line(checked), flush=True)

    def delta(name: str, label: str | None = None) -> float:
        return metric_total(after, name, label) - metric_total(before, name, label)

    computed = delta("vllm:prompt_tokens_by_source_total", "local_compute")
    gen = delta("vllm:generation_tokens_total")
    iterations = delta("vllm:iteration_tokens_total_count")
    calls = sum(u["engine_calls"] for u in usages)
    tokens = sum(u["completion_tokens"] for u in usages)
    positions = round(usages[0]["thought_tokens"] / usages[0]["completion_tokens"]) + 1
    if engine == "continuation":
        measured = gen / tokens  # decode positions + the prompt's last, per token
        expected, expected_steps = positions, continuation_steps(t, *sizes)
    else:
        measured = (computed + gen - calls) / tokens
        expected = (
            sum(
                expected_forward(u["prompt_tokens"], u["engine_calls"], positions, args.block_size)
                for u in usages
            )
            / tokens
        )
        expected_steps = positions
    return {
        "accounting": checked,
        "engine": engine,
        "delimiters": delimiters,
        "thought_tokens": t,
        "steps": positions,  # positions per round: s + t + e + 1
        "engine_calls_per_request": calls / len(usages),
        "vllm_forward_per_token": measured,
        "expected_per_token": expected,
        "vllm_steps_per_token": iterations / tokens,
        "expected_steps_per_token": expected_steps,
        "prompt_positions_per_request": computed / len(usages),
        "usage_forward_per_token": sum(u["forward_tokens"] for u in usages) / tokens,
    }


# -- speed: the engine paths vs the HF loops ----------------------------------------------------
def speed(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    """Output tokens/s for every (t, concurrency): the gateway with the continuation engine and
    with the per-token engine, the HF lockstep loop with a cropped KV cache (batch =
    concurrency), and the HF no-cache reference-style loop (batch 1, concurrency 1 only), in
    alternating rounds, each side alone on the machine."""
    most = max(args.questions, *args.concurrency)
    qs = cli.questions(args, most)
    sides = [f"gateway:{e}" for e in args.engines] + [f"hf:{c}" for c in args.hf_caches]
    if args.plain_bound:
        sides.append(PLAIN_BOUND)
        tokenizer = AutoTokenizer.from_pretrained(cli.engine_settings(args).model_path())
        sizes = delimiter_sizes(tokenizer, args.delimiters)
        steps_per_token = {t: continuation_steps(t, *sizes) for t in args.thought_tokens}

    def grid(side: str) -> list[tuple[int, int]]:
        if side in ("hf:none", "hf:thought"):  # batch-1 loops: concurrency 1 only
            return [(t, 1) for t in args.thought_tokens]
        return [(t, c) for t in args.thought_tokens for c in args.concurrency]

    def measure(rnd: int, side: str) -> dict[str, Any]:
        kind, mode = side.split(":")
        rows = []
        if side == PLAIN_BOUND:
            with gateway(args, f"r{rnd}-speed-plain") as gw:
                model = cli.engine_settings(args).name()
                for t, c in grid(side):
                    steps = steps_per_token[t]  # t + 3 with one-token delimiters
                    n = max(args.questions, c)
                    run_bodies(gw.url, [body(model, q, 2) for _, q in qs[:c]], concurrency=c)
                    bodies = [
                        body(model, q, args.max_tokens * steps, seed=p.index, ignore_eos=True)
                        for p, q in qs[:n]
                    ]
                    done = run_bodies(gw.url, bodies, concurrency=c)
                    plain = sum(r.completion_tokens for r in done.results) / done.wall_s
                    rows.append(
                        {"t": t, "concurrency": c, "tokens_per_s": plain / steps,
                         "plain_tokens_per_s": plain}
                    )  # fmt: skip
        elif kind == "gateway":
            with gateway(args, f"r{rnd}-speed-{mode}", *engine_flag(mode)) as gw:
                model = cli.engine_settings(args).name()
                for t, c in grid(side):
                    block = {"thought_tokens": t, "mixing_weight": args.mixing_weight}
                    block |= delimiter_block(args.delimiters)
                    n = max(args.questions, c)
                    warm = [body(model, q, 2, block, seed=p.index) for p, q in qs[:c]]
                    run_bodies(gw.url, warm, concurrency=c)
                    bodies = [
                        body(model, q, args.max_tokens, block, seed=p.index, ignore_eos=True)
                        for p, q in qs[:n]
                    ]
                    done = run_bodies(gw.url, bodies, concurrency=c)
                    tokens = sum(r.completion_tokens for r in done.results)
                    rows.append({"t": t, "concurrency": c, "tokens_per_s": tokens / done.wall_s})
        else:
            for t, c in grid(side):
                path = cli.logs_dir(args) / f"r{rnd}-hf-{mode}-t{t}-c{c}.json"
                cmd = [
                    sys.executable, "-m", "loadtest.benchmarks.hf_quiet_star",
                    "--questions", str(max(args.questions, c)),
                    "--max-tokens", str(args.max_tokens),
                    "--thought-tokens", str(t), "--mixing-weight", str(args.mixing_weight),
                    "--cache", mode, "--batch", str(c), "--no-plain", "--out", str(path),
                    *(["--model", args.model] if args.model else []),
                    *(["--data", args.data] if args.data else []),
                    *_delimiter_flags(args.delimiters),
                ]  # fmt: skip
                subprocess.run(cmd, cwd=REPO, check=True)
                hf = json.loads(path.read_text())
                adopt_sides(hf)
                rows.append({"t": t, "concurrency": c, "tokens_per_s": 1 / hf["seconds_per_token"]})
        return {"side": side, "round": rnd, "rows": rows}

    sessions = run_rounds(sides, measure, args.rounds, lambda ss: save({"sessions": ss}))
    return {"settings": _settings(args), "sessions": sessions}


def speed_cells(sessions: list[dict]) -> dict[tuple[str, int, int], dict]:
    """(side, t, concurrency) -> spread of tokens/s over the rounds."""
    values: dict[tuple[str, int, int], list[float]] = {}
    for session in sessions:
        for row in session["rows"]:
            key = (session["side"], row["t"], row["concurrency"])
            values.setdefault(key, []).append(row["tokens_per_s"])
    return {k: spread(v) for k, v in values.items()}


def _delimiter_flags(spec: str) -> list[str]:
    """hf_quiet_star's --start-token/--end-token for a delimiter spec."""
    return [f for k, v in delimiter_block(spec).items() for f in ("--" + k.replace("_", "-"), v)]


# -- methods side by side ---------------------------------------------------------------------
def method_configs(args: argparse.Namespace) -> dict[str, dict]:
    rebase = {"width": args.width, "max_step_tokens": args.max_step_tokens, "step_delimiter": "\n"}
    qs = {"thought_tokens": args.t, "mixing_weight": args.mixing_weight}
    return {
        "baseline": {"method": "baseline"},
        "rebase": {"method": "rebase", "rebase": rebase},
        "quiet_star": {"method": "quiet_star", "quiet_star": qs},
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


def methods(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    qs = cli.questions(args, args.questions)
    configs = method_configs(args)
    with gateway(args, "methods") as gw:
        model = cli.engine_settings(args).name()
        run_bodies(gw.url, [body(model, qs[0][1], 4)], concurrency=1)

        def measure(rnd: int, name: str) -> dict[str, Any]:
            bodies = [
                body(model, q, args.max_tokens, seed=args.seed + p.index) | configs[name]
                for p, q in qs
            ]
            done = run_bodies(gw.url, bodies, concurrency=args.concurrency)
            n = len(done.results)
            total = {
                k: sum(r.usage[k] for r in done.results) / n
                for k in ("thought_tokens", "forward_tokens", "engine_calls")
            }
            return {
                "side": name,
                "round": rnd,
                "seconds_per_question": done.wall_s / n,
                "gflops_executed": sum(r.usage["flops"]["executed"] for r in done.results)
                / n
                / 1e9,
                "gflops_nominal": sum(r.usage["flops"]["nominal"] for r in done.results) / n / 1e9,
                **total,
                "correct": sum(
                    answers_match(extract_answer(r.texts[0]), p.reference)
                    for (p, _), r in zip(qs, done.results, strict=True)
                ),
            }

        sessions = run_rounds(
            list(configs), measure, args.rounds, lambda ss: save({"sessions": ss})
        )
    return {"settings": _settings(args), "configs": configs, "sessions": sessions}


# -- coherence of the mixing weight -------------------------------------------------------------
def coherence(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    qs = cli.questions(args, args.questions)
    configs: dict[str, dict | None] = {"baseline": None}
    for w in args.weights:
        configs[f"w={w} {args.delimiters}"] = {
            "thought_tokens": args.t,
            "mixing_weight": w,
            **delimiter_block(args.delimiters),
        }
    texts: dict[str, list[str]] = {}
    with gateway(args, "coherence") as gw:
        model = cli.engine_settings(args).name()
        for name, block in configs.items():
            bodies = [
                body(model, q, args.max_tokens, block, temperature=0.0, seed=args.seed + p.index)
                for p, q in qs
            ]
            texts[name] = [
                r.texts[0] for r in run_bodies(gw.url, bodies, concurrency=len(bodies)).results
            ]
    scorer = _Scorer(cli.engine_settings(args).model_path())
    rows = []
    for name in configs:
        ids = [scorer.ids(t) for t in texts[name]]
        base = [scorer.ids(t) for t in texts["baseline"]]
        rows.append(
            {
                "config": name,
                "identical_to_baseline": sum(a == b for a, b in zip(ids, base, strict=True)),
                "median_common_prefix": spread(
                    _common_prefix(a, b) for a, b in zip(ids, base, strict=True)
                )["median"],
                "mean_nll": spread(
                    scorer.nll(q, t) for (_, q), t in zip(qs, texts[name], strict=True) if t
                )["median"],
                "texts": texts[name],
            }
        )
    return {"settings": _settings(args), "rows": rows}


class _Scorer:
    """The model's tokenizer (to compare texts token by token) and its mean NLL of a text given
    the prompt: how unlikely the base model finds it (a repetition loop also scores low)."""

    def __init__(self, model_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(2)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        record_hf_side(self.model, torch.get_num_threads(), kind="hf-scorer")

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def nll(self, prompt: str, text: str) -> float:
        p, c = self.ids(prompt), self.ids(text)
        with self.torch.inference_mode():
            logits = self.model(input_ids=self.torch.tensor([p + c])).logits[0, len(p) - 1 : -1]
            logp = self.torch.log_softmax(logits.float(), dim=-1)
            return float(-logp.gather(1, self.torch.tensor(c).view(-1, 1)).mean())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("out", "logs")}


# -- tables for the docs ----------------------------------------------------------------------
def tables(payload: dict[str, Any]) -> dict[str, str]:
    name = payload["benchmark"]
    if name == "quiet_star_forward":
        rows = [
            [
                r["engine"],
                "one-token" if r["delimiters"] == ONE_TOKEN_DELIMITERS else r["delimiters"],
                r["thought_tokens"],
                r["steps"],
                fmt(r["engine_calls_per_request"], 1),
                fmt(r["vllm_forward_per_token"]),
                fmt(r["expected_per_token"]),
                fmt(r["vllm_steps_per_token"]),
                r["expected_steps_per_token"],
                fmt(r["prompt_positions_per_request"], 1),
            ]
            for r in payload["rows"]
        ]  # fmt: skip
        header = [
            "engine",
            "delimiters",
            "t",
            "round tokens (s + t + e + 1)",
            "engine calls / request",
            "fwd / token (vLLM counters)",
            "analytic",
            "engine steps / token (vLLM)",
            "analytic",
            "prompt positions / request",
        ]
        return {name: markdown_table(header, rows)}
    if name == "quiet_star_speed":
        cells = speed_cells(payload["sessions"])
        header = ["t", "concurrency", *dict.fromkeys(k[0] for k in cells)]
        rows = []
        for t, c in sorted({(k[1], k[2]) for k in cells}):
            row: list[Any] = [t, c]
            for side in header[2:]:
                cell_ = cells.get((side, t, c))
                row.append(fmt_spread(cell_, 1) if cell_ else "–")
            rows.append(row)
        ratios = []
        ours = "gateway:continuation"
        for other in [side for side in header[2:] if side != ours]:
            for t, c in sorted({(k[1], k[2]) for k in cells}):
                if (ours, t, c) in cells and (other, t, c) in cells:
                    ratio = cells[(ours, t, c)]["median"] / cells[(other, t, c)]["median"]
                    ratios.append([other, t, c, fmt(ratio, 2) + "x"])
        return {
            name: markdown_table(header, rows)
            + "\n\noutput tokens/s (median [min, max] over rounds)\n\n"
            + markdown_table([f"{ours} vs", "t", "concurrency", "speed-up"], ratios)
        }
    if name == "quiet_star_methods":
        keys = {  # key -> (column, digits)
            "seconds_per_question": ("s / question", 2),
            "gflops_executed": ("GFLOPs executed / q", 1),
            "gflops_nominal": ("GFLOPs nominal / q", 1),
            "thought_tokens": ("thought tok / q", 0),
            "engine_calls": ("engine calls / q", 1),
            "correct": (f"correct (of {payload['settings']['questions']})", 0),
        }
        rows = []
        for side in dict.fromkeys(s["side"] for s in payload["sessions"]):
            mine = [s for s in payload["sessions"] if s["side"] == side]
            rows.append(
                [side] + [fmt_spread(spread(s[k] for s in mine), d) for k, (_, d) in keys.items()]
            )
        header = ["config"] + [column for column, _ in keys.values()]
        return {name: markdown_table(header, rows)}
    rows = [
        [
            cell(r["config"]),
            f"{r['identical_to_baseline']}/{len(r['texts'])}",
            fmt(r["median_common_prefix"], 1),
            fmt(r["mean_nll"]),
            "`" + cell(r["texts"][0][:60]) + "`",
        ]
        for r in payload["rows"]
    ]
    header = ["config", "text == baseline", "median common prefix (tokens)", "median NLL", "sample"]
    return {name: markdown_table(header, rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    common = cli.parser("", rounds=True)
    common.add_argument("--mixing-weight", type=float, default=0.1)
    common.add_argument("--max-tokens", type=int, default=32)
    common.add_argument("--t", type=int, default=4, help="thought tokens (methods, coherence)")
    common.add_argument("--questions", type=int, default=4)
    for name in ("forward", "speed", "methods", "coherence"):
        sub.add_parser(name, parents=[common], add_help=False, conflict_handler="resolve")
    sp = sub.choices
    for name in ("forward", "speed"):
        sp[name].add_argument("--thought-tokens", type=int, nargs="+", default=[4, 8])
        sp[name].add_argument(
            "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="gateway sides"
        )
    # one-token delimiters: a round is exactly t + 3 tokens ("default": the gateway's
    # multi-token strings on models without thought tokens, s + t + e + 1)
    sp["speed"].add_argument("--delimiters", default=ONE_TOKEN_DELIMITERS)
    sp["forward"].add_argument("--delimiters", nargs="+", default=[ONE_TOKEN_DELIMITERS, "default"])
    sp["speed"].add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    sp["speed"].add_argument(
        "--plain-bound",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure plain decoding of as many tokens as Quiet-STaR takes steps",
    )
    sp["speed"].add_argument(
        "--hf-caches", nargs="+", choices=["crop", "thought", "none"], default=["crop", "none"]
    )
    sp["methods"].add_argument("--concurrency", type=int, default=8)
    sp["methods"].add_argument("--width", type=int, default=4)
    sp["methods"].add_argument("--max-step-tokens", type=int, default=16)
    sp["coherence"].add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    )
    sp["coherence"].add_argument("--delimiters", default="default")
    args = parser.parse_args(argv)
    run = {"forward": forward, "speed": speed, "methods": methods, "coherence": coherence}[
        args.benchmark
    ]
    payload = cli.run_benchmark(f"quiet_star_{args.benchmark}", args, lambda save: run(args, save))
    print("\n\n".join(tables(payload).values()))


if __name__ == "__main__":
    main()
