"""Command line: `python -m loadtest [run] ...`, `report RECORDS.jsonl`, `export-bench`.

Why options default to None: a preset (`--protocol seed`) supplies its own values, and an
option given explicitly on the command line must still win over the preset. Resolution order:
explicit option > preset > general default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.conventions import PAPER_GFLOPS_PER_TOKEN
from loadtest.harness.data import DataError, default_source, load_problems
from loadtest.harness.lock import LockHeld, measurement_lock
from loadtest.prompts import DEFAULT_TEMPLATE, PromptBuilder, load_chat_tokenizer
from loadtest.protocols import ANSWER_METHOD_KEY, PROTOCOLS, MethodConfig, Protocol
from loadtest.runner import RunSettings

COMMANDS = ("run", "report", "export-bench", "docs")


# ---- shared options ------------------------------------------------------------------------------
def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="GSM8K JSONL file, a folder with {split}.jsonl, or a hub id "
        f"(default: {default_source()})",
    )
    g.add_argument("--split", help="split to replay (default: test)")
    g.add_argument("--limit", type=int, help="number of problems (default: all)")
    g.add_argument("--offset", type=int, help="skip this many problems first (after shuffling)")
    g.add_argument("--shuffle", action="store_true", help="Dataset.shuffle(seed=--seed) first")
    g.add_argument("--seed", type=int, help="shuffle seed, also the Poisson seed (default: 0)")


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument(
        "--template", help=f"prompt template with {{question}} (default: {DEFAULT_TEMPLATE!r})"
    )
    g.add_argument(
        "--shots",
        type=int,
        default=0,
        help="k-shot: prepend the first k problems of the train split (default: 0)",
    )
    g.add_argument(
        "--shots-data",
        help="source of the exemplars (default: --data; a folder's train split, or the same file)",
    )
    g.add_argument(
        "--chat",
        nargs="?",
        const="auto",
        choices=("auto", "chatml", "tokenizer"),
        help="chat-format the prompt: 'tokenizer' = the --tokenizer's chat template, "
        "'chatml' = ChatML; bare --chat = tokenizer if given, else ChatML",
    )
    g.add_argument("--tokenizer", help="local tokenizer folder (the served model's) for --chat")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument(
        "--url",
        default=os.environ.get("THINKSCALE_URL", "http://127.0.0.1:8000"),
        help="gateway URL (default: $THINKSCALE_URL or http://127.0.0.1:8000)",
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("THINKSCALE_API_KEY") or os.environ.get("OPENAI_API_KEY"),
        help="bearer token (default: $THINKSCALE_API_KEY or $OPENAI_API_KEY)",
    )
    g.add_argument("--model", help="model name to send (default: the first of GET /v1/models)")
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, s")
    g = p.add_argument_group("methods and sampling")
    g.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        help="a preset; 'seed' = the paper's experiment (see docs/loadtest.md)",
    )
    g.add_argument(
        "--methods",
        help="comma-separated configs (default: baseline); with a "
        "protocol, filters its configs by name or method",
    )
    g.add_argument(
        "--method-params",
        type=json.loads,
        default={},
        help='JSON: config -> extra body fields, e.g. \'{"rebase": {"rebase": '
        '{"width": 8}}}\'; "method" sets the server method of a labelled config',
    )
    g.add_argument("--max-tokens", type=int, help="completion tokens (default: 256)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default: 0)")
    g.add_argument("--n", type=int, help="samples per problem, majority vote (default: 1)")
    g.add_argument("--sample-seed", type=int, help="request seed = this + problem index")
    g.add_argument(
        "--answer-suffix",
        help="second pass: prompt + text + SUFFIX, "
        "--answer-max-tokens more tokens (the paper's answer extraction)",
    )
    g.add_argument("--answer-max-tokens", type=int, help="tokens of the second pass (default 12)")
    g.add_argument(
        "--extractor",
        choices=("auto", "first_integer", "seed"),
        help="answer extraction (default: the protocol's, 'seed' for --protocol seed = the "
        "seed's first integer; first_integer with --answer-suffix; "
        "else auto = server.core.answers.extract_answer)",
    )
    g.add_argument(
        "--rebase-aggregation",
        choices=("weighted_vote", "majority_vote", "best_of_n"),
        help="final answer of every REBASE config (default: the server's weighted vote; "
        "best_of_n = the seed's rule, the top-scored leaf)",
    )
    g.add_argument(
        "--rebase-prune-score",
        type=float,
        help="REBASE configs drop open nodes scoring <= this (the seed's rule: 0.1)",
    )
    g.add_argument(
        "--early-stop",
        type=_early_stop,
        help="REBASE configs: off, exact (the server's default) or c0.95 (adaptive at 0.95)",
    )
    g = p.add_argument_group("load shape")
    g.add_argument(
        "--concurrency",
        type=int,
        help="closed loop: requests in flight (default 8; the seed protocol: 1); "
        "with --rate: an optional cap",
    )
    g.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="output folder (default: loadtest-results/<time>)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _add_paper_option(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--save-text", action="store_true", help="keep generated texts in records")
    g.add_argument(
        "--wait-lock",
        action="store_true",
        help="queue behind another measurement (the machine-wide lock, "
        "$THINKSCALE_BENCH_LOCK) instead of failing",
    )


def _add_paper_option(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--paper-gflops-per-token",
        type=float,
        default=PAPER_GFLOPS_PER_TOKEN,
        help="the paper's FLOPs convention: GFLOPs per generated token "
        f"(default {PAPER_GFLOPS_PER_TOKEN}, Mistral-7B as the seed charged it)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Replay GSM8K against a thinkscale server and report accuracy, FLOPs, time.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="replay problems against a server (the default command)")
    _add_data_options(run)
    _add_prompt_options(run)
    _add_run_options(run)
    report = sub.add_parser("report", help="rebuild the report from saved records")
    report.add_argument("records", type=Path, help="records.jsonl of an earlier run")
    report.add_argument("--out", type=Path, help="output folder (default: the records' folder)")
    report.add_argument("--no-plots", action="store_true")
    _add_paper_option(report)
    sub.add_parser(
        "docs",
        help="regenerate the tables in docs/*.md from committed data (--check: only compare)",
        add_help=False,
    )
    bench = sub.add_parser("export-bench", help="write prompts for `vllm bench serve`")
    _add_data_options(bench)
    _add_prompt_options(bench)
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("gsm8k_bench.jsonl"),
        help="output .jsonl (default: gsm8k_bench.jsonl)",
    )
    bench.add_argument(
        "--output-tokens",
        type=int,
        help="write an output_tokens field (for --custom-output-len -1)",
    )
    return parser


# ---- resolution ----------------------------------------------------------------------------------
def _pick(explicit: Any, preset: Any, default: Any) -> Any:
    if explicit is not None:
        return explicit
    return preset if preset is not None else default


@dataclass(frozen=True)
class DataChoice:
    source: str
    split: str
    limit: int | None
    offset: int
    shuffle: bool
    seed: int

    def load(self) -> list:
        return load_problems(
            self.source,
            self.split,
            limit=self.limit,
            offset=self.offset,
            shuffle=self.shuffle,
            seed=self.seed,
        )


def resolve_data(args: argparse.Namespace, proto: Protocol | None = None) -> DataChoice:
    return DataChoice(
        source=args.data or default_source(),
        split=_pick(args.split, proto and proto.split, "test"),
        limit=_pick(args.limit, proto and proto.limit, None),
        offset=args.offset or 0,
        shuffle=args.shuffle or bool(proto and proto.shuffle),
        seed=_pick(args.seed, proto and proto.seed, 0),
    )


def resolve_prompt(
    args: argparse.Namespace, data: DataChoice, proto: Protocol | None = None
) -> PromptBuilder:
    """The PromptBuilder: template, k-shot exemplars from the train split, chat format."""
    template = _pick(args.template, proto and proto.template, DEFAULT_TEMPLATE)
    shots: tuple[tuple[str, str], ...] = ()
    if args.shots:
        exemplars = load_problems(args.shots_data or data.source, "train", limit=args.shots)
        shots = tuple((p.question, p.answer) for p in exemplars)
    chat = args.chat
    tokenizer = None
    if chat == "auto":
        chat = "tokenizer" if args.tokenizer else "chatml"
    if chat == "tokenizer":
        if not args.tokenizer:
            raise SystemExit("error: --chat tokenizer needs --tokenizer PATH")
        tokenizer = load_chat_tokenizer(args.tokenizer)
    return PromptBuilder(template=template, shots=shots, chat=chat, tokenizer=tokenizer)


def resolve_configs(args: argparse.Namespace, proto: Protocol | None) -> list[MethodConfig]:
    """Configs to run: the preset's (filtered by --methods) or one per --methods entry;
    --method-params entries are merged into them (one level deep for parameter blocks)."""
    params: dict[str, Any] = args.method_params or {}
    if not isinstance(params, dict):
        raise SystemExit("error: --method-params must be a JSON object")
    wanted = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    if proto is not None:
        configs = [c for c in proto.configs if not wanted or c.name in wanted or c.method in wanted]
        unmatched = [w for w in wanted if all(w not in (c.name, c.method) for c in proto.configs)]
        if unmatched:
            raise SystemExit(
                f"error: --methods {', '.join(unmatched)}: not a config of the {proto.name} "
                f"protocol ({', '.join(c.name for c in proto.configs)})"
            )
    else:
        configs = [MethodConfig.from_params(name) for name in wanted or ["baseline"]]
    out = []
    for c in configs:
        if not isinstance(params.get(c.name) or {}, dict):
            raise SystemExit(f"error: --method-params for {c.name!r} must be a JSON object")
        entry = dict(params.get(c.name) or {})
        method = str(entry.pop("method", c.method))
        answer_method = entry.pop(ANSWER_METHOD_KEY, c.answer_method)
        body = dict(c.body)
        if args.n is not None and "n" in body:
            body["n"] = args.n  # an explicit --n wins over a preset's per-config n
        rebase_options = {
            "aggregation": getattr(args, "rebase_aggregation", None),
            "prune_score": getattr(args, "rebase_prune_score", None),
            "early_stop": getattr(args, "early_stop", None),
        }
        rebase_options = {k: v for k, v in rebase_options.items() if v is not None}
        if rebase_options and "rebase" in method:
            body["rebase"] = {**body.get("rebase", {}), **rebase_options}
        for key, value in entry.items():
            both_dicts = isinstance(value, dict) and isinstance(body.get(key), dict)
            body[key] = {**body[key], **value} if both_dicts else value
        out.append(MethodConfig(c.name, method, body, answer_method))
    unknown = sorted(set(params) - {c.name for c in out})
    if unknown:
        raise SystemExit(f"error: --method-params names configs not run: {', '.join(unknown)}")
    return out


def resolve_settings(
    args: argparse.Namespace, proto: Protocol | None, data: DataChoice
) -> RunSettings:
    suffix = _pick(args.answer_suffix, proto and proto.answer_suffix, None)
    concurrency = args.concurrency
    if concurrency is None and not args.rate:
        concurrency = proto.concurrency if proto else 8
    return RunSettings(
        max_tokens=_pick(args.max_tokens, proto and proto.max_tokens, 256),
        temperature=_pick(args.temperature, proto and proto.temperature, 0.0),
        # A preset sets n per config (an explicit --n overrides those, see resolve_configs).
        n=proto.n if proto else _pick(args.n, None, 1),
        concurrency=concurrency,
        rate=args.rate,
        arrival_seed=data.seed,
        answer_suffix=suffix,
        answer_max_tokens=_pick(args.answer_max_tokens, proto and proto.answer_max_tokens, 12),
        extractor=_pick(
            args.extractor, proto and proto.extractor, "first_integer" if suffix else "auto"
        ),
        model=args.model,
        protocol=proto.name if proto else None,
        sample_seed=args.sample_seed,
        save_text=args.save_text,
    )


# ---- commands ------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.harness import accounting
    from loadtest.harness.client import GatewayClient
    from loadtest.harness.results import provenance
    from loadtest.records import append_record, write_records
    from loadtest.report import write_report
    from loadtest.runner import replay

    proto = PROTOCOLS.get(args.protocol) if args.protocol else None
    data = resolve_data(args, proto)
    configs = resolve_configs(args, proto)
    settings = resolve_settings(args, proto, data)
    if settings.n > 1 and settings.temperature == 0:
        _log("warning: --n > 1 at temperature 0 draws the same sample n times")
    problems = data.load()
    if not problems:
        raise SystemExit("error: no problems selected")
    build = resolve_prompt(args, data, proto)
    prompts = [build(p.question) for p in problems]
    out = args.out or Path("loadtest-results") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    records_path.write_text("")
    _log(
        f"replaying {len(problems)} problems ({data.source}, split {data.split}) x "
        f"{len(configs)} config(s) against {args.url}; records -> {records_path}"
    )

    async def go():
        async with GatewayClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            return await replay(
                client,
                problems,
                prompts,
                configs,
                settings,
                on_record=lambda r: append_record(records_path, r),
                progress=not args.no_progress,
                log=_log,
            )

    try:
        with (
            measurement_lock(f"loadtest run {args.url}", wait=args.wait_lock),
            accounting.Window(args.url) as window,  # /metrics before and after the run
        ):
            records = asyncio.run(go())
    except LockHeld as exc:
        raise SystemExit(f"error: {exc}") from None
    except httpx.HTTPError as exc:
        raise SystemExit(f"error: cannot talk to the server at {args.url}: {exc}") from None
    if not records:
        _log("nothing was run (no config the server offers)")
        return 1
    # The records file was appended in completion order; rewrite it in problem order.
    write_records(records_path, records)
    facts = {
        "url": args.url,
        "data": data.source,
        "split": data.split,
        "limit": data.limit,
        "offset": data.offset,
        "shuffle": data.shuffle,
        "seed": data.seed,
        "template": build.template,
        "shots": len(build.shots),
        "chat": build.chat,
        "settings": {k: v for k, v in vars(settings).items() if k != "save_text"},
        "configs": [vars(c) for c in configs],
        # Where the replay ran and on what tree (the server's side too when this process
        # started it: loadtest.benchmarks.results_run); the output folder is not a change.
        "provenance": provenance(exclude=(out,)),
        "accounting": window.result,
    }
    text = write_report(
        records,
        out,
        plots=not args.no_plots,
        extra=facts,
        paper_gflops_per_token=args.paper_gflops_per_token,
    )
    text = _with_accounting(text, out, window.result)
    print(text)
    _log(f"report: {out / 'report.md'}, {out / 'summary.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from loadtest.records import read_records
    from loadtest.report import write_report

    records = read_records(args.records)
    if not records:
        raise SystemExit(f"error: no records in {args.records}")
    out = args.out or args.records.parent
    # Keep the run's facts (command settings) from the summary written beside the records.
    old_summary = args.records.parent / "summary.json"
    extra = json.loads(old_summary.read_text()).get("run") if old_summary.is_file() else None
    text = write_report(
        records,
        out,
        plots=not args.no_plots,
        extra=extra,
        paper_gflops_per_token=args.paper_gflops_per_token,
    )
    if extra and "accounting" in extra:
        text = _with_accounting(text, out, extra["accounting"])
    print(text)
    return 0


def _with_accounting(text: str, out: Path, result: dict[str, Any]) -> str:
    """The report with its accounting check's line (loadtest/harness/accounting.py) last."""
    from loadtest.harness import accounting

    text += "\n" + accounting.report_line(result) + "\n"
    (out / "report.md").write_text(text)
    return text


def cmd_export_bench(args: argparse.Namespace) -> int:
    from loadtest.bench import bench_command, write_bench_dataset

    data = resolve_data(args)
    problems = data.load()
    build = resolve_prompt(args, data)
    count = write_bench_dataset(args.out, problems, build, args.output_tokens)
    _log(f"wrote {count} prompts to {args.out}; replay them with:")
    print(bench_command(args.out, "http://127.0.0.1:8000", count))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our progress bars are per method; `datasets`' "Generating split" bars are noise here.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")  # `python -m loadtest --limit 3` means `run --limit 3`
    if argv[0] == "docs":  # listed for --help; it runs above the benchmarks (__main__.py)
        raise SystemExit("error: run `python -m loadtest docs` (loadtest/docs.py)")
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "report": cmd_report, "export-bench": cmd_export_bench}
    try:
        return handlers[args.command](args)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None


def _early_stop(value: str) -> str | dict[str, float]:
    """``off`` | ``exact`` | ``c0.95``: the REBASE block's ``early_stop``."""
    if value in ("off", "exact"):
        return value
    if value.startswith("c"):
        try:
            confidence = float(value[1:])
        except ValueError:
            confidence = -1.0
        if 0.5 < confidence < 1.0:
            return {"confidence": confidence}
    raise argparse.ArgumentTypeError(f"expected off, exact or c<confidence>, got {value!r}")
