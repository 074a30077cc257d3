"""Scale-out end to end: two `vllm serve` replicas (our logits processor loaded) behind the
pinned router (vllm-router, consistent hashing on the routing-key header), two gateways in
remote mode.

What must hold (docs/scaling.md): the remote engine gives the same tokens as the in-process
one for every method; every call of one tree lands on one replica (from the replicas' own
vLLM counters), the same key from either gateway lands on the same replica, trees spread over
both; a replica SIGKILLed under load costs no hung request, the survivor serves what follows,
and a restarted replica takes trees again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loadtest.harness import metrics, servers
from loadtest.harness.servers import EngineSettings, ServerProcess

pytestmark = pytest.mark.e2e

PROMPT = "Q: What is 2 + 3? A: Let's think step by step."
SUCCESS = "vllm:request_success_total"
# Replicas schedule by vLLM priority; gateway 1 runs the priority REBASE scheduler and forwards
# each call's priority to them, gateway 0 the default scheduler (nothing forwarded).
PRIORITY = ("--scheduling-policy", "priority")
GATEWAY_PRIORITY = ("--rebase-scheduler", "priority", "--engine-priority-scheduling")
HITS = "vllm:prefix_cache_hits_total"


def _engine(model_dir: Path) -> EngineSettings:
    """The session gateway's engine settings (tests/conftest.py), resolved as on this CPU."""
    return EngineSettings(
        model=str(model_dir),
        served_name="tiny",
        max_model_len=1024,
        kv_cache_gib=1,
        dtype="float32",
        block_size=32,
        max_num_seqs=64,
        seed=0,
    )


@dataclass
class Cluster:
    engine: EngineSettings
    replicas: list[ServerProcess]
    router: ServerProcess
    gateways: list[ServerProcess]
    log_dir: Path

    def counts(self, name: str = SUCCESS) -> list[float]:
        return [metrics.metric_total(metrics.scrape_metrics(r.url), name) for r in self.replicas]


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("scale")
    engine = _engine(tiny_model_dir)
    started: list[ServerProcess] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            replicas = list(
                pool.map(
                    lambda i: servers.start_replica(engine, log_dir / f"replica{i}.log", *PRIORITY),
                    range(2),
                )
            )
        started += replicas
        router = servers.start_router([r.url for r in replicas], log_dir / "router.log")
        started.append(router)
        gateways = []
        for i in range(2):
            gw = servers.start_gateway(
                engine,
                log_dir / f"gateway{i}.log",
                "--engine-url", router.url, "--engine-replicas", "2",
                *(GATEWAY_PRIORITY if i == 1 else ()),
            )  # fmt: skip
            started.append(gw)
            gateways.append(gw)
        cluster = Cluster(engine, list(replicas), router, gateways, log_dir)
        yield cluster
        started += cluster.replicas  # a replica the failover test restarted
    finally:
        for server in reversed(started):
            server.stop()


def _post(url: str, body: dict, request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-Id": request_id} if request_id else {}
    return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=300)


def _body(method: str, **extra) -> dict:
    body: dict = {"model": "tiny", "prompt": PROMPT, "method": method, "max_tokens": 12}
    if method in ("rebase", "quiet_star+rebase"):
        body["rebase"] = {"width": 3, "max_depth": 2, "max_step_tokens": 6}
    if method in ("quiet_star", "quiet_star+rebase"):
        body["quiet_star"] = {"thought_tokens": 2, "mixing_weight": 0.3}
        body["max_tokens"] = 4
    body.update(extra)
    return body


PARITY = [
    pytest.param(_body("baseline", temperature=0), id="baseline-greedy"),
    pytest.param(_body("baseline", temperature=1.0, seed=7, n=2), id="baseline-seeded"),
    pytest.param(_body("rebase", temperature=1.0, seed=3), id="rebase-seeded"),
    pytest.param(_body("quiet_star", temperature=0), id="quiet_star-greedy"),
    pytest.param(_body("quiet_star", temperature=1.0, seed=5), id="quiet_star-seeded"),
    pytest.param(_body("quiet_star+rebase", temperature=1.0, seed=2), id="quiet_star+rebase"),
]


@pytest.mark.parametrize("body", PARITY)
def test_remote_engine_gives_the_in_process_tokens(cluster: Cluster, gateway, body) -> None:
    """Same seeded/greedy request: identical text and token counts on both engines."""
    local = _post(gateway.url, body)
    remote = _post(cluster.gateways[0].url, body)
    assert local.status_code == 200, local.text
    assert remote.status_code == 200, remote.text
    lj, rj = local.json(), remote.json()
    assert [c["text"] for c in rj["choices"]] == [c["text"] for c in lj["choices"]]
    assert [c["finish_reason"] for c in rj["choices"]] == [
        c["finish_reason"] for c in lj["choices"]
    ]
    for key in ("completion_tokens", "thought_tokens"):
        assert rj["usage"][key] == lj["usage"][key], key
    # The same engine plumbing on both: Quiet-STaR is one continuation call per sequence on
    # the replicas too (they run our scheduler).
    assert rj["usage"]["engine_calls"] == lj["usage"]["engine_calls"]


def test_priority_rebase_on_priority_replicas_grows_the_in_process_tree(
    cluster: Cluster, gateway
) -> None:
    """Gateway 1 sends every tree call with its (non-zero) vLLM priority; replicas on the
    priority policy accept them, and the seeded trees are the in-process engine's."""
    body = _body("rebase", temperature=1.0, seed=6, n=2)
    local = _post(gateway.url, body)
    remote = _post(cluster.gateways[1].url, body)
    assert local.status_code == 200, local.text
    assert remote.status_code == 200, remote.text
    lj, rj = local.json(), remote.json()
    assert [c["text"] for c in rj["choices"]] == [c["text"] for c in lj["choices"]]
    assert rj["usage"]["engine_calls"] == lj["usage"]["engine_calls"]


def test_streaming_through_the_remote_engine_matches(cluster: Cluster, gateway) -> None:
    body = _body("baseline", temperature=0, stream=True)
    texts = []
    for url in (gateway.url, cluster.gateways[1].url):
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
            assert r.status_code == 200
            chunks = [
                json.loads(line[5:])
                for line in r.iter_lines()
                if line.startswith("data:") and "[DONE]" not in line
            ]
        texts.append("".join(c["choices"][0]["text"] for c in chunks if c["choices"]))
    assert texts[0] == texts[1] and texts[0]


def _one_tree(cluster: Cluster, gateway_index: int, request_id: str, prompt: str) -> tuple:
    """One REBASE tree; returns (per-replica finished-request deltas, its engine calls)."""
    before = cluster.counts()
    response = _post(
        cluster.gateways[gateway_index].url,
        _body("rebase", prompt=prompt, temperature=1.0, seed=1),
        request_id,
    )
    assert response.status_code == 200, response.text
    after = cluster.counts()
    return [a - b for a, b in zip(after, before, strict=True)], response.json()["usage"]


def _replica_of_key(cluster: Cluster, key: str) -> int:
    """Which replica the router sends `key` to: one one-token call straight to the router."""
    before = cluster.counts()
    response = httpx.post(
        f"{cluster.router.url}/v1/completions",
        json={"model": "tiny", "prompt": PROMPT, "max_tokens": 1},
        headers={servers.ROUTING_HEADER: key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    deltas = [a - b for a, b in zip(cluster.counts(), before, strict=True)]
    assert sorted(deltas) == [0, 1], deltas
    return deltas.index(1)


def test_each_tree_stays_on_one_replica_and_trees_spread(cluster: Cluster) -> None:
    """Trees are keyed `cmpl-<request id>-p<prompt>-<choice>`: every call of a tree lands
    on the replica the router picks for that key, and trees whose keys hash apart run on both.

    Which replica a key hashes to depends on the replicas' (random) ports, and eight fixed
    keys all hash to one replica about once in a hundred rings: so the router is first asked
    where candidate keys go, and two trees per replica are grown under such keys.
    """
    by_replica: dict[int, list[str]] = {0: [], 1: []}
    for i in range(64):
        request_id = f"tree-affinity-{i}"
        replica = _replica_of_key(cluster, f"cmpl-{request_id}-p0-0")  # prompt 0, tree 0
        if len(by_replica[replica]) < 2:
            by_replica[replica].append(request_id)
        if all(len(ids) == 2 for ids in by_replica.values()):
            break
    assert all(len(ids) == 2 for ids in by_replica.values()), f"never spread: {by_replica}"
    planned = [(replica, rid) for replica, ids in by_replica.items() for rid in ids]
    for i, (replica, request_id) in enumerate(planned):
        deltas, usage = _one_tree(cluster, i % 2, request_id, f"{PROMPT} ({request_id})")
        expected = [0, 0]
        expected[replica] = usage["engine_calls"]
        assert deltas == expected, (request_id, deltas)  # every call on the key's replica


def test_the_same_key_lands_on_the_same_replica_from_either_gateway(cluster: Cluster) -> None:
    first, _ = _one_tree(cluster, 0, "same-key", PROMPT + " again")
    second, _ = _one_tree(cluster, 1, "same-key", PROMPT + " again")
    assert first.index(max(first)) == second.index(max(second))


def test_child_expansions_hit_the_prefix_cache_as_in_process(cluster: Cluster, gateway) -> None:
    """A tree's children share their parent's prefix: cached prompt tokens, counted from the
    replicas' usage, are comparable to the in-process engine's for a fresh prompt."""
    # Longer than two KV blocks (32 tokens on CPU): only whole blocks are cached.
    fresh = "A fresh prompt for the cache check. " + " ".join([PROMPT] * 6)
    body = _body("rebase", temperature=1.0, seed=4, prompt=fresh)
    local = _post(gateway.url, body).json()["usage"]
    hits_before = sum(cluster.counts(HITS))
    remote = _post(cluster.gateways[0].url, body, "cache-check").json()["usage"]
    assert remote["cached_tokens"] > 0
    assert remote["cached_tokens"] >= 0.5 * local["cached_tokens"]
    assert sum(cluster.counts(HITS)) - hits_before >= remote["cached_tokens"]
    assert remote["flops"]["executed"] < remote["flops"]["nominal"]


def _run(url: str, body: dict) -> tuple[int, dict]:
    try:
        response = _post(url, body)
    except httpx.HTTPError as exc:  # a hang would end here (timeout): the test fails on it
        return -1, {"error": repr(exc)}
    return response.status_code, response.json()


@pytest.mark.slow
def test_a_killed_replica_fails_over_and_a_restarted_one_rejoins(cluster: Cluster) -> None:
    """SIGKILL one replica under mixed REBASE + Quiet-STaR load through both gateways."""
    victim = cluster.replicas[0]
    bodies = [
        _body("rebase", temperature=1.0, seed=i, prompt=f"{PROMPT} load {i}", max_tokens=60)
        if i % 2
        else _body(
            "quiet_star", temperature=1.0, seed=i, prompt=f"{PROMPT} load {i}", max_tokens=12
        )
        for i in range(8)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [
            pool.submit(_run, cluster.gateways[i % 2].url, body) for i, body in enumerate(bodies)
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it while it has work in flight
            running = metrics.metric_total(
                metrics.scrape_metrics(victim.url), "vllm:num_requests_running"
            )
            if running > 0:
                break
            time.sleep(0.2)
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        results = [f.result(timeout=600) for f in futures]
    for status, payload in results:
        assert status == 200 or (status >= 500 and "message" in payload.get("error", {})), payload
    assert sum(status == 200 for status, _ in results) > 0

    survivor = cluster.replicas[1]
    for i in range(4):  # new trees all go to the survivor
        status, payload = _run(cluster.gateways[i % 2].url, _body("rebase", seed=i))
        assert status == 200, payload

    port = int(victim.url.rsplit(":", 1)[1])
    restarted = servers.start_replica(
        cluster.engine, cluster.log_dir / "replica0-restarted.log", *PRIORITY, port=port
    )
    cluster.replicas[0] = restarted
    assert survivor is cluster.replicas[1]
    deadline = time.monotonic() + 120
    took = 0.0
    i = 0
    while time.monotonic() < deadline and not took:
        time.sleep(1)  # the router's health check (every second) re-admits it
        deltas, _ = _one_tree(cluster, i % 2, f"rejoin-{i}", f"{PROMPT} rejoin {i}")
        took = deltas[0]
        i += 1
    assert took > 0, "the restarted replica never got a tree"


def test_a_replica_without_the_continuation_scheduler_is_refused_at_start(
    cluster: Cluster,
) -> None:
    """A replica started without our scheduler answers plain calls fine; the gateway's start-up
    probe (a one-talk-token Quiet-STaR continuation) must refuse it, naming the flags."""
    without_scheduler = [
        flag
        for flag in servers.REPLICA_FLAGS
        if flag
        not in ("--scheduler-cls", "kernels.quiet_star.scheduler.QuietStarScheduler",
                "--no-async-scheduling")
    ]  # fmt: skip
    replica = servers.start_vllm_serve(
        cluster.engine, cluster.log_dir / "replica-stock-scheduler.log", *without_scheduler
    )
    log = cluster.log_dir / "gateway-refused.log"
    try:
        with pytest.raises(RuntimeError, match="exited early"):
            servers.start_gateway(cluster.engine, log, "--engine-url", replica.url)
    finally:
        replica.stop()
    text = log.read_text()
    assert f"replica {replica.url} cannot serve every method" in text
    assert "--scheduler-cls kernels.quiet_star.scheduler.QuietStarScheduler" in text


@pytest.mark.slow
def test_a_quiet_star_continuation_cut_by_a_replica_kill_resumes_on_the_other(
    cluster: Cluster,
) -> None:
    """SIGKILL the replica running a streamed Quiet-STaR sequence: the call resumes on the
    other replica from the visible text, and the client gets the whole, well-formed answer."""
    max_tokens = 300
    body = _body(
        "quiet_star", temperature=1.0, seed=11, max_tokens=max_tokens, ignore_eos=True,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    gateway = cluster.gateways[0]
    chunks: list[dict] = []
    victim: int | None = None
    with httpx.stream("POST", f"{gateway.url}/v1/completions", json=body, timeout=600) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunks.append(json.loads(line[5:]))
            if victim is None and len(chunks) >= 10:  # mid-stream: kill the one running it
                running = [
                    metrics.metric_total(metrics.scrape_metrics(r.url), "vllm:num_requests_running")
                    for r in cluster.replicas
                ]
                assert sorted(running) == [0, 1], running
                victim = running.index(1)
                process = cluster.replicas[victim].process
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert victim is not None, "the call ended before the kill"
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    assert "error" not in json.dumps(chunks[-1])
    assert finish[-1] == "length" and usage["completion_tokens"] == max_tokens
    assert usage["engine_calls"] == 2  # the cut attempt and the resumed one, both charged
    assert usage["thought_tokens"] >= max_tokens * 2  # every talk token was thought about
    assert text  # the decoded talk tokens; thought tokens never reach the stream

    port = int(cluster.replicas[victim].url.rsplit(":", 1)[1])
    cluster.replicas[victim] = servers.start_replica(
        cluster.engine, cluster.log_dir / f"replica{victim}-after-qs.log", *PRIORITY, port=port
    )
