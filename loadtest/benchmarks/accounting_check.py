"""Is every request charged for what it ran? The requests that were once charged nothing.

A Quiet-STaR sequence on the continuation engine that ended any way but ``length`` (EOS, a
stop string, streamed or not) used to report zero forward tokens, engine calls and FLOPs.
This runs exactly those requests (and a ``quiet_star+rebase`` tree) on a gateway with the
default settings of ``make serve`` (SmolLM2-135M, continuation engine, the CPU dtype policy),
records each one's usage, and checks the whole window against vLLM's own counter
(docs/architecture.md, "Accounting identity"). Counts, not timings: it does not need a quiet
machine, but it takes the measurement lock like every benchmark.

    python -m loadtest.benchmarks.accounting_check --out docs/data/accounting_check.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from loadtest.harness import accounting, cli
from loadtest.harness.servers import EngineSettings, start_gateway
from loadtest.harness.tables import markdown_table

NAME = "accounting_check"
GSM8K = (
    "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?\nA:"
)
# SmolLM2-Instruct's chat format: it answers briefly and ends with its EOS (<|im_end|>).
CHAT = "<|im_start|>user\nWhat is 7 + 5? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
QUIET_STAR = {"method": "quiet_star", "max_tokens": 48}
REQUESTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("baseline, chat prompt", {"method": "baseline", "max_tokens": 48, "seed": 1, "prompt": CHAT}),
    ("quiet_star, chat prompt, seed 1", {**QUIET_STAR, "seed": 1, "prompt": CHAT}),
    ("quiet_star, chat prompt, seed 2", {**QUIET_STAR, "seed": 2, "prompt": CHAT}),
    ("quiet_star, GSM8K prompt, seed 3", {**QUIET_STAR, "seed": 3, "prompt": GSM8K}),
    (
        'quiet_star, GSM8K prompt, stop ["."]',
        {**QUIET_STAR, "seed": 1, "stop": ["."], "prompt": GSM8K},
    ),
    (
        "quiet_star, chat prompt, stream + include_usage",
        {**QUIET_STAR, "seed": 1, "stream": True, "prompt": CHAT},
    ),
    (
        "quiet_star+rebase, width 3, GSM8K prompt",
        {"method": "quiet_star+rebase", "seed": 1, "max_tokens": 48, "rebase": {"width": 3},
         "prompt": GSM8K},
    ),
)  # fmt: skip


def run_one(url: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request's finish reason and usage (the final usage chunk when streamed)."""
    body = {"model": model, **body}
    with httpx.Client(base_url=url, timeout=1800) as http:
        if not body.get("stream"):
            response = http.post("/v1/completions", json=body)
            response.raise_for_status()
            data = response.json()
            return {"finish_reason": data["choices"][0]["finish_reason"], "usage": data["usage"]}
        body["stream_options"] = {"include_usage": True}
        finish, usage = None, None
        with http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                usage = chunk.get("usage") or usage
        return {"finish_reason": finish, "usage": usage}


def measure(args: argparse.Namespace, save: cli.Save) -> dict[str, Any]:
    engine = EngineSettings(
        model=args.model,
        served_name=args.served_model_name,
        kv_cache_gib=args.kv_cache_gib,
        dtype=None if args.dtype == "default" else args.dtype,
        block_size=args.block_size or None,
        max_model_len=None,
    )
    rows = []
    log = cli.logs_dir(args) / "gateway.log"
    with start_gateway(engine, log) as gw, accounting.Window(gw.url) as window:
        for label, body in REQUESTS:
            rows.append({"request": label, **run_one(gw.url, engine.name(), body)})
            save({"rows": rows})
    return {
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "accounting": window.result,
    }


def tables(payload: dict[str, Any]) -> dict[str, str]:
    header = [
        "request", "finish", "completion tokens", "thought tokens", "forward_tokens",
        "engine_calls", "flops.executed",
    ]  # fmt: skip
    rows = []
    for row in payload["rows"]:
        u = row["usage"]
        rows.append(
            [row["request"], row["finish_reason"], u["completion_tokens"], u["thought_tokens"],
             u["forward_tokens"], u["engine_calls"], f"{u['flops']['executed']:.3g}"]
        )  # fmt: skip
    return {
        NAME: markdown_table(header, rows) + "\n\n" + accounting.report_line(payload["accounting"])
    }


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__.splitlines()[0], rounds=False)
    parser.set_defaults(dtype="default", block_size=0)  # what `make serve` runs
    args = parser.parse_args(argv)
    payload = cli.run_benchmark(NAME, args, lambda save: measure(args, save))
    print(tables(payload)[NAME])


if __name__ == "__main__":
    main()
