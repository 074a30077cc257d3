"""The pinned router's contract with our remote engine, against scripted replicas (no engine):
token-id prompts, `return_token_ids`, `vllm_xargs` and every sampling field arrive unchanged,
the streamed usage with `prompt_tokens_details` comes back unchanged, one routing key always
lands on one replica and keys spread, a dead replica's keys move to the survivor and come back
when it returns. The same with real replicas: tests/e2e/test_scale.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vllm import SamplingParams

from kernels.quiet_star.spec import QuietStarSpec
from loadtest.harness import servers
from loadtest.harness.servers import REPO, ROUTING_HEADER, ServerProcess, free_port
from server.engines.remote import completion_body


def _worker(port: int, log: Path) -> ServerProcess:
    command = [sys.executable, "-m", "tests.scripted_worker", str(port), str(log)]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    server = ServerProcess("worker", f"http://127.0.0.1:{port}", process, log, command)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError("scripted worker did not start")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("router")
    workers = [_worker(free_port(), tmp / f"w{i}.jsonl") for i in range(2)]
    router = servers.start_router([w.url for w in workers], tmp / "router.log")
    yield workers, router
    for server in (router, *workers):
        server.stop()


def _post(router: ServerProcess, body: dict, key: str) -> list[dict]:
    with httpx.stream(
        "POST", f"{router.url}/v1/completions", json=body,
        headers={ROUTING_HEADER: key}, timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        return [
            json.loads(line[5:])
            for line in response.iter_lines()
            if line.startswith("data:") and "[DONE]" not in line
        ]


def _body() -> dict:
    spec = QuietStarSpec(
        key="k", thought_tokens=2, mixing_weight=0.5, thought_temperature=1.0,
        temperature=0.0, top_p=1.0, start_token_ids=(3,), end_token_ids=(4,),
        banned_token_ids=(0, 3, 4),
    )  # fmt: skip
    params = SamplingParams(
        max_tokens=7, temperature=0.7, top_p=0.9, top_k=5, min_p=0.01, seed=5, stop=["\n"],
        stop_token_ids=[9], include_stop_str_in_output=True, logprobs=2, min_tokens=1,
        presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1, ignore_eos=True,
        skip_special_tokens=False, extra_args=spec.to_extra_args(),
    )  # fmt: skip
    return completion_body("tiny", [1, 2, 3], params)


def _records(workers: list[ServerProcess]) -> list[dict]:
    return [
        json.loads(line)
        for w in workers
        if w.log_path.exists()
        for line in w.log_path.read_text().splitlines()
    ]


def _served_by(chunks: list[dict]) -> int:
    return chunks[0]["worker"]


def test_the_router_passes_our_calls_and_usage_through(setup) -> None:
    workers, router = setup
    body = _body()
    chunks = _post(router, body, "passthrough")
    arrived = [r["body"] for r in _records(workers) if "body" in r][-1]
    assert {k: v for k, v in body.items() if arrived.get(k) != v} == {}
    assert [c["choices"][0]["token_ids"] for c in chunks if c["choices"]] == [[10], [11], [12]]
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}


def test_a_client_that_goes_away_aborts_the_replica_stream(setup) -> None:
    """The remote engine aborts a call by closing its stream; the router must pass that on."""
    workers, router = setup
    body = {**_body(), "max_tokens": 1000}
    with httpx.stream(
        "POST", f"{router.url}/v1/completions", json=body,
        headers={ROUTING_HEADER: "abort"}, timeout=30,
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 10  # the full stream would take 10 s
    while time.monotonic() < deadline:
        ends = [r["stream_end"] for r in _records(workers) if "stream_end" in r]
        if ends:
            assert ends == ["aborted"]
            return
        time.sleep(0.2)
    pytest.fail("the replica's stream was never closed")


def test_one_key_one_replica_and_keys_spread(setup) -> None:
    _, router = setup
    for key in ("tree-a", "tree-b", "tree-c"):
        assert len({_served_by(_post(router, _body(), key)) for _ in range(4)}) == 1
    # 32 keys: which replica a key hashes to depends on the (random) ports, and a dozen keys
    # all hash to one replica in a few rings per thousand.
    assert len({_served_by(_post(router, _body(), f"tree-{i}")) for i in range(32)}) == 2


def test_a_dead_replicas_keys_move_and_come_back(setup) -> None:
    workers, router = setup
    keys = [f"fail-{i}" for i in range(12)]
    home = {k: _served_by(_post(router, _body(), k)) for k in keys}
    ports = [int(w.url.rsplit(":", 1)[1]) for w in workers]
    victim_index = ports.index(home[keys[0]])  # a replica that is home to some keys
    victim = workers[victim_index]
    port = ports[victim_index]
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the health check takes it off the ring
        try:
            if {_served_by(_post(router, _body(), k)) for k in keys} == {ports[1 - victim_index]}:
                break
        except AssertionError:
            pass  # a request that hit the dead replica before the ring moved: 5xx
        time.sleep(0.5)
    else:
        pytest.fail("keys never moved to the survivor")
    workers[victim_index] = _worker(port, victim.log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the circuit-breaker timeout, then health checks
        if {k: _served_by(_post(router, _body(), k)) for k in keys} == home:
            return
        time.sleep(1)
    pytest.fail("the restarted replica never got its keys back")
