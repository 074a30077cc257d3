"""Per-problem solving and the replay of a config, on the harness's one load driver.

The load shape (closed loop with a concurrency, or open loop with Poisson arrivals) is
``loadtest.harness.driver``'s; this module decides what one problem costs and answers.

One problem may take several requests: `n` samples come back from one request and are voted on;
with an answer suffix (the paper's protocol) a second request continues every sample with
"...Therefore, the answer (arabic numerals) is" for a few tokens. A record charges all of them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from tqdm import tqdm

from loadtest.conventions import DEFAULT_MAX_STEP_TOKENS, seed_first_integer, seed_tokens
from loadtest.harness.client import CallResult, GatewayClient
from loadtest.harness.data import Problem
from loadtest.harness.driver import drive
from loadtest.protocols import MethodConfig
from loadtest.records import Record
from server.core.answers import answers_match, extract_answer, first_integer

Extractor = Literal["auto", "first_integer", "seed"]
EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "auto": extract_answer,
    "first_integer": first_integer,
    "seed": seed_first_integer,
}


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is the same for every config (configs may override
    `n`, `max_tokens` and `temperature` in their body)."""

    max_tokens: int = 256
    temperature: float = 0.0
    n: int = 1
    concurrency: int | None = 8  # closed loop: requests in flight; open loop: optional cap
    rate: float | None = None  # open loop: mean arrivals per second (Poisson)
    arrival_seed: int = 0
    answer_suffix: str | None = None  # second pass: prompt + text + suffix -> answer_max_tokens
    answer_max_tokens: int = 12
    extractor: Extractor = "auto"
    model: str | None = None
    protocol: str | None = None
    sample_seed: int | None = None  # request `seed` = sample_seed + problem index
    save_text: bool = False


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-empty answer; ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def _request_body(
    config: MethodConfig, settings: RunSettings, problem: Problem, prompt: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "n": settings.n,
        "method": config.method,
    }
    if settings.model:
        body["model"] = settings.model
    if settings.sample_seed is not None:
        body["seed"] = settings.sample_seed + problem.index
    body.update(config.body)
    return body


def _answer_body(
    config: MethodConfig, settings: RunSettings, first: dict[str, Any], prompts: list[str]
) -> dict[str, Any]:
    """The answer-extraction pass: one request, one prompt per sample, a few tokens each."""
    method = config.answer_method or config.method
    body: dict[str, Any] = {
        "prompt": prompts,
        "max_tokens": settings.answer_max_tokens,
        "temperature": first["temperature"],
        "n": 1,
        "method": method,
    }
    for key in ("model", "seed"):
        if key in first:
            body[key] = first[key]
    if method == config.method:
        body.update(config.blocks)
    return body


def early_stop_setting(body: dict) -> str | None:
    """The REBASE early-stop setting a request runs with (the server's default: "exact")."""
    if "rebase" not in str(body.get("method", "")):
        return None
    rule = (body.get("rebase") or {}).get("early_stop", "exact")
    return f"confidence={rule['confidence']:g}" if isinstance(rule, dict) else str(rule)


async def solve(
    client: GatewayClient,
    problem: Problem,
    prompt: str,
    config: MethodConfig,
    settings: RunSettings,
) -> Record:
    """Answer one problem with one config; never raises (errors go into the record)."""
    record = Record(
        config=config.name,
        method=config.method,
        problem_id=problem.id,
        reference=problem.reference,
        model=settings.model,
        protocol=settings.protocol,
        start_time=time.time(),
    )
    start = time.perf_counter()
    body = _request_body(config, settings, problem, prompt)
    record.early_stop = early_stop_setting(body)
    first = await client.complete(body)
    step_tokens = (config.body.get("rebase") or {}).get("max_step_tokens", DEFAULT_MAX_STEP_TOKENS)
    record.seed_tokens = seed_tokens(first.usage, first.details, step_tokens)
    record.add_usage(first.usage)
    record.ttft = first.ttft
    texts = list(first.texts)
    error = first.error
    if error is None and settings.answer_suffix is not None and texts:
        suffix = settings.answer_suffix
        second: CallResult = await client.complete(
            _answer_body(config, settings, body, [prompt + t + suffix for t in texts])
        )
        record.add_usage(second.usage)
        record.seed_tokens += seed_tokens(second.usage, second.details, step_tokens)
        error = second.error
        tails = second.texts + [""] * (len(texts) - len(second.texts))
        texts = [t + suffix + tail for t, tail in zip(texts, tails, strict=False)]
    record.latency = time.perf_counter() - start
    record.end_time = time.time()
    record.error = error
    if error is None:
        extract = EXTRACTORS[settings.extractor]
        record.votes = [extract(t) for t in texts]
        record.predicted = majority_vote(record.votes)
        record.correct = answers_match(record.predicted, problem.reference)
    if settings.save_text:
        record.texts = texts
    return record


async def run_config(
    client: GatewayClient,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    config: MethodConfig,
    settings: RunSettings,
    *,
    on_record: Callable[[Record], None] | None = None,
    progress: bool = True,
) -> list[Record]:
    """Replay every problem with one config, closed or open loop; records in problem order."""
    bar = tqdm(
        total=len(problems), desc=config.name, unit="q", disable=not progress, file=sys.stderr
    )
    correct = done = 0

    async def one(i: int) -> Record:
        nonlocal correct, done
        record = await solve(client, problems[i], prompts[i], config, settings)
        correct, done = correct + record.correct, done + 1
        bar.set_postfix(acc=f"{correct / done:.3f}", refresh=False)
        bar.update(1)
        if on_record is not None:
            on_record(record)
        return record

    try:
        result = await drive(
            len(problems),
            one,
            concurrency=settings.concurrency,
            rate=settings.rate,
            seed=settings.arrival_seed,
        )
        return result.results
    finally:
        bar.close()


def unavailable(config: MethodConfig, server_methods: Sequence[str] | None) -> list[str]:
    """The methods a config needs that the server does not list (none if it lists nothing)."""
    if server_methods is None:
        return []
    return sorted(m for m in config.methods_needed if m not in server_methods)


async def replay(
    client: GatewayClient,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    configs: Sequence[MethodConfig],
    settings: RunSettings,
    *,
    on_record: Callable[[Record], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> list[Record]:
    """Run every config the server offers, one after the other (so each gets the whole server).

    Configs whose method the server doesn't list in GET /v1/models are skipped with a message.
    """
    info = await client.server_info()
    if settings.model is None:
        settings = replace(settings, model=info.model)
    records: list[Record] = []
    for config in configs:
        missing = unavailable(config, info.methods)
        if missing:
            offered = ", ".join(info.methods or [])
            log(
                f"skipping {config.name!r}: the server does not offer {', '.join(missing)} "
                f"(it offers: {offered})"
            )
            continue
        records += await run_config(
            client, problems, prompts, config, settings, on_record=on_record, progress=progress
        )
    return records
