"""Every request is charged for what it ran, checked against vLLM's own counter.

The accounting identity (docs/architecture.md, "Accounting identity"): over a window in which
only the gateway's own requests run, and no request was preempted,

    increase of vllm:iteration_tokens_total_sum
        = sum of forward_tokens + emitting_calls - unreported_tokens

summed over every response's `usage.components` (policy and a policy-judge reward: both run
on the policy engine), or over the gateway's own counters when clients went away and got no
usage. One dedicated gateway serves the whole module, so no other test's traffic is counted.

Its tiny model is the test model with the LM head's EOS row turned toward the mean final
hidden state, so EOS is sampled about a quarter of the time: sequences end on
EOS within a few tokens, deterministically for a seed, without a trained model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.harness import servers
from loadtest.harness.servers import EngineSettings
from tests.conftest import completion_ok, http_client, running_gateway, scrape_metrics
from tests.tiny_model import build_tiny_llama

pytestmark = pytest.mark.e2e

PROMPT = "Q: Natalia sold clips to 48 of her friends in April. How many in May?\nA:"
ITERATION_TOKENS = "vllm:iteration_tokens_total_sum"
PREEMPTIONS = "vllm:num_preemptions_total"
QUIET_STAR = {"thought_tokens": 2, "mixing_weight": 0.5}
EOS_SEED = 5
REQUEST_TIMEOUT_S = 30


def build_eos_prone_model(directory: Path, strength: float = 0.75) -> Path:
    """The tiny Llama whose EOS logit follows the hidden states' common direction."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    build_tiny_llama(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode(PROMPT, add_special_tokens=False)])
    torch.manual_seed(0)
    with torch.no_grad():
        text = model.generate(
            ids, max_new_tokens=64, do_sample=True, top_k=0, eos_token_id=None, pad_token_id=0
        )
        hidden = model(text, output_hidden_states=True).hidden_states[-1][0].mean(0)
        # The LM head only: an EOS that was read back (ignore_eos) must not call for more EOS.
        head = model.get_input_embeddings().weight.detach().clone()
        head[tokenizer.eos_token_id] = strength * hidden / hidden.norm()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def eos_prone_model(tmp_path_factory) -> Path:
    return build_eos_prone_model(tmp_path_factory.mktemp("eos-prone"))


@pytest.fixture(scope="module")
def http(eos_prone_model: Path, tmp_path_factory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("accounting") / "gateway.log"
    # Every cell ends within seconds; the timeout cell runs into this limit.
    timeout = ("--request-timeout-s", str(REQUEST_TIMEOUT_S))
    with running_gateway(eos_prone_model, log, *timeout) as gw, http_client(gw) as client:
        yield client


@pytest.fixture(scope="module")
def remote(eos_prone_model: Path, tmp_path_factory) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A gateway on the remote engine and the one `vllm serve` replica it talks to."""
    logs = tmp_path_factory.mktemp("accounting-remote")
    engine = EngineSettings(
        model=str(eos_prone_model), served_name="tiny", max_model_len=1024, kv_cache_gib=1,
        dtype="float32", block_size=None, max_num_seqs=None, seed=0,
    )  # fmt: skip
    replica = servers.start_replica(engine, logs / "replica.log")
    try:
        gw = servers.start_gateway(
            engine, logs / "gateway.log", "--engine-url", replica.url, "--engine-replicas", "1"
        )
        try:
            with http_client(gw) as client, http_client(replica) as replica_client:
                yield client, replica_client
        finally:
            gw.stop()
    finally:
        replica.stop()


def metric(samples: dict[str, float], name: str, label: str = "") -> float:
    """The sum of a series over its labels (those containing `label`)."""
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and label in k)


def idle_metrics(http: httpx.Client, timeout: float = 120) -> dict[str, float]:
    """/metrics once the engine has nothing running or waiting and vLLM's counter stopped
    moving (it is published after the outputs that end a request)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        samples = scrape_metrics(http)
        busy = metric(samples, "vllm:num_requests_running") + metric(
            samples, "vllm:num_requests_waiting"
        )
        now = metric(samples, ITERATION_TOKENS)
        if busy == 0 and now == last:
            return samples
        assert time.monotonic() < deadline, "the engine did not go idle"
        last = now
        time.sleep(1.0)


def request(method: str, **overrides) -> dict:
    body: dict = {"prompt": PROMPT, "max_tokens": 8, "seed": 1, "method": method}
    if method == "quiet_star":
        body["quiet_star"] = QUIET_STAR
    body.update(overrides)
    return body


def run(http: httpx.Client, body: dict) -> dict:
    """A completion, streamed or not; returns {"text", "finish_reason", "stop_reason", "usage"}."""
    if not body.get("stream"):
        out = completion_ok(http, body)
        choice = out["choices"][0]
        return {
            "text": choice["text"],
            "finish_reason": choice["finish_reason"],
            "stop_reason": choice.get("stop_reason"),  # left out when null
            "usage": out["usage"],
        }
    body = {**body, "stream_options": {"include_usage": True}}
    text, finish, stop_reason, usage = "", None, None, None
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                text += choice["text"]
                finish = choice["finish_reason"] or finish
                stop_reason = choice.get("stop_reason") or stop_reason
    assert usage is not None
    return {"text": text, "finish_reason": finish, "stop_reason": stop_reason, "usage": usage}


def engine_charge(usage: dict) -> int:
    """What the relation says vLLM's counter counted for one response (all its components:
    none of this module's requests uses a PRM engine of its own)."""
    return sum(
        c["forward_tokens"] + c["emitting_calls"] - c["unreported_tokens"]
        for c in usage["components"].values()
    )


def stop_string_in(text: str) -> str:
    """Two characters from the middle of a text the same seed will generate again."""
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip() and text.index(stop) > 0, text
    return stop


def tree(depth: int, **extra) -> dict:
    return {"width": 2, "max_step_tokens": 4, "step_delimiter": " ", "max_depth": depth, **extra}


def test_every_response_is_charged_and_adds_up_to_vllms_counter(http) -> None:
    """The issue's table, re-run, plus REBASE trees: every response is charged, and the
    window's charges add up exactly to vLLM's own count."""
    before = idle_metrics(http)
    results: dict[str, dict] = {}
    for method in ("baseline", "quiet_star"):
        for stream in (False, True):
            tag = f"{method}/{'stream' if stream else 'json'}"
            length = run(http, request(method, ignore_eos=True, stream=stream))
            assert length["finish_reason"] == "length"
            results[f"{tag}/length"] = length
            eos = run(http, request(method, max_tokens=16, seed=EOS_SEED, stream=stream))
            assert eos["finish_reason"] == "stop" and eos["stop_reason"] is None, eos
            results[f"{tag}/eos"] = eos
            stop = stop_string_in(length["text"])
            cut = run(http, request(method, ignore_eos=True, stop=[stop], stream=stream))
            assert cut["finish_reason"] == "stop" and cut["stop_reason"] == stop, cut
            results[f"{tag}/stop_string"] = cut
    # think="step_start": one engine request per thought (FINAL_ONLY), plain decoding between
    step_start = {**QUIET_STAR, "think": "step_start", "step_delimiter": " "}
    results["quiet_star/step_start/eos"] = run(
        http, request("quiet_star", max_tokens=16, seed=EOS_SEED, quiet_star=step_start)
    )
    length = run(http, request("quiet_star", ignore_eos=True, quiet_star=step_start))
    results["quiet_star/step_start/length"] = length
    text = length["text"]
    results["quiet_star/step_start/stop_string"] = cut = run(
        http,
        request("quiet_star", ignore_eos=True, stop=[stop_string_in(text)], quiet_star=step_start),
    )
    assert cut["finish_reason"] == "stop", cut
    for method in ("rebase", "quiet_star+rebase"):
        extra = (
            {"quiet_star": {"thought_tokens": 1, "mixing_weight": 0.5}} if "quiet" in method else {}
        )
        results[f"{method}/complete"] = run(
            http,
            request(method, max_tokens=12, rebase=tree(4, reward_model="policy_judge"), **extra),
        )
        results[f"{method}/depth_cap"] = run(
            http, request(method, max_tokens=24, ignore_eos=True, rebase=tree(2), **extra)
        )
    after = idle_metrics(http)

    for cell, result in results.items():
        usage = result["usage"]
        assert usage["forward_tokens"] > 0, cell
        assert usage["engine_calls"] > 0, cell
        assert usage["flops"]["executed"] > 0, cell
        parts = usage["components"]
        assert usage["forward_tokens"] == sum(c["forward_tokens"] for c in parts.values())
        assert usage["forward_tokens_policy"] == parts["policy"]["forward_tokens"], cell
        assert usage["completion_tokens_details"]["reasoning_tokens"] == usage["thought_tokens"]
        if cell.startswith("quiet_star/"):
            assert usage["thought_tokens"] > 0, cell
    judged = results["rebase/complete"]["usage"]
    assert judged["forward_tokens_reward"] == judged["components"]["reward"]["forward_tokens"] > 0

    assert metric(after, PREEMPTIONS) == metric(before, PREEMPTIONS)  # nothing recomputed
    counted = metric(after, ITERATION_TOKENS) - metric(before, ITERATION_TOKENS)
    charged = {cell: engine_charge(r["usage"]) for cell, r in results.items()}
    assert sum(charged.values()) == counted, charged
    # The gateway's own counters agree with the responses.
    forward = metric(after, "thinkscale_tokens_total", 'kind="forward"') - metric(
        before, "thinkscale_tokens_total", 'kind="forward"'
    )
    assert forward == sum(r["usage"]["forward_tokens"] for r in results.values())
    engine = metric(after, "thinkscale_engine_tokens_total") - metric(
        before, "thinkscale_engine_tokens_total"
    )
    assert engine == counted


def disconnect(http: httpx.Client, body: dict, *, wait_s: float = 0.0) -> None:
    """Open a stream, read its first event (or wait, for a search that streams at its end),
    and go away."""
    body = {**body, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        if wait_s:
            time.sleep(wait_s)
            return
        for line in response.iter_lines():
            if line.startswith("data: "):
                return


def test_disconnects_and_timeouts_are_charged_what_the_engine_ran(http) -> None:
    """Clients that go away, and a request cut by the gateway's timeout, get no usage: the
    gateway's own counters must still add up to vLLM's (forward + emitting calls -
    forward_unreported)."""
    before = idle_metrics(http)
    long = {"max_tokens": 400, "ignore_eos": True}
    disconnect(http, request("baseline", **long))
    disconnect(http, request("quiet_star", **long))
    # Steps that run to their token cap: hundreds of sequential engine steps, cut mid-search.
    big = tree(30, width=4, max_step_tokens=32, step_delimiter="\n\n\n")
    disconnect(http, request("rebase", rebase=big, **{**long, "max_tokens": 900}), wait_s=0.5)
    disconnect(
        http,
        request("quiet_star+rebase", rebase=big, quiet_star={"thought_tokens": 1}, **long),
        wait_s=0.5,
    )
    # Thousands of engine steps: far past the gateway's request timeout.
    slow = request("quiet_star", max_tokens=900, ignore_eos=True, quiet_star={"thought_tokens": 16})
    response = http.post("/v1/completions", json=slow)
    assert response.status_code == 504, response.text
    after = idle_metrics(http)

    def moved(name: str, label: str = "") -> float:
        return metric(after, name, label) - metric(before, name, label)

    assert moved(PREEMPTIONS) == 0
    cancelled = {
        method: moved("thinkscale_requests_total", f'method="{method}",status="cancelled"')
        for method in ("baseline", "quiet_star", "rebase", "quiet_star+rebase")
    }
    assert cancelled == dict.fromkeys(cancelled, 1.0)
    assert moved("thinkscale_requests_total", 'method="quiet_star",status="timeout"') == 1
    counted = moved(ITERATION_TOKENS)
    assert counted > 0
    forward = moved("thinkscale_tokens_total", 'kind="forward"')
    unreported = moved("thinkscale_tokens_total", 'kind="forward_unreported"')
    emitting = moved("thinkscale_engine_calls_emitting_total")
    assert forward + emitting - unreported == counted
    assert moved("thinkscale_engine_tokens_total") == counted


def test_the_remote_engine_adds_up_to_its_replicas_counter(remote) -> None:
    """The remote engine's charge against the replica's own counter. Exact on calls that end
    by themselves; a call the gateway closes early (a Quiet-STaR stop string, a
    quiet_star+rebase step end: the continuation call carries neither) leaves the replica
    counting the tokens it had produced but not streamed, which the gateway never sees, so
    there the charge is a lower bound."""
    http, replica = remote
    before = idle_metrics(replica)
    usages, stops = [], {}
    for method in ("baseline", "quiet_star"):
        length = run(http, request(method, ignore_eos=True))
        eos = run(http, request(method, max_tokens=16, seed=EOS_SEED))
        assert eos["finish_reason"] == "stop", eos
        usages += [length["usage"], eos["usage"]]
        stops[method] = stop_string_in(length["text"])
    cut = run(http, request("baseline", ignore_eos=True, stop=[stops["baseline"]]))
    assert cut["finish_reason"] == "stop", cut  # vLLM's own stop: the call ends by itself
    usages.append(cut["usage"])
    usages.append(run(http, request("rebase", max_tokens=12, rebase=tree(3)))["usage"])
    after = idle_metrics(replica)
    assert metric(after, PREEMPTIONS) == metric(before, PREEMPTIONS)
    counted = metric(after, ITERATION_TOKENS) - metric(before, ITERATION_TOKENS)
    assert all(u["forward_tokens"] > 0 and u["flops"]["executed"] > 0 for u in usages)
    assert sum(engine_charge(u) for u in usages) == counted

    cut = run(http, request("quiet_star", ignore_eos=True, stop=[stops["quiet_star"]]))
    assert cut["finish_reason"] == "stop", cut
    extra = {"quiet_star": {"thought_tokens": 1, "mixing_weight": 0.5}}
    tree_usage = run(http, request("quiet_star+rebase", max_tokens=12, rebase=tree(2), **extra))
    later = idle_metrics(replica)
    counted = metric(later, ITERATION_TOKENS) - metric(after, ITERATION_TOKENS)
    assert 0 < engine_charge(cut["usage"]) + engine_charge(tree_usage["usage"]) <= counted
