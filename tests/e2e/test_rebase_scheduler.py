"""End-to-end: the REBASE scheduler at a small cap survives cancelled wide trees (no slot
leaks), and
a request over the per-request work bound is answered 400.

Why its own gateway: the leak needs trees wider than the scheduler's cap. At the default cap
(64) only very wide trees leak, so this module starts a gateway with `--rebase-max-in-flight 2`
(and a short request timeout, so a wedged scheduler fails the test in a minute, not 30).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, http_client, running_gateway, scrape_metrics
from tests.e2e.test_rebase import QUESTION, SMALL_TREE, engine_requests, rebase_body

pytestmark = pytest.mark.e2e

CAP = 2
# Width 16 at a cap of 2: 14 of the first level's 16 expansions wait in the queue. No leaf
# ends early (ignore_eos, 64 levels of 14 tokens): alone, such a tree runs for tens of seconds,
# far longer than the 2 s after which the clients below give up on it.
WIDE = rebase_body(
    max_tokens=896,
    ignore_eos=True,
    rebase={"width": 16, "max_step_tokens": 14, "step_delimiter": "@@", "max_depth": 64},
)
CANCELLED = 'thinkscale_requests_total{method="rebase",status="cancelled"}'
JOBS_IN_FLIGHT = "thinkscale_rebase_jobs_in_flight"


@pytest.fixture(scope="module")
def small_cap(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log_path = tmp_path_factory.mktemp("gateway-small-cap") / "gateway.log"
    with running_gateway(
        tiny_model_dir,
        log_path,
        "--rebase-max-in-flight", str(CAP),
        "--request-timeout-s", "90",
    ) as gateway:  # fmt: skip
        yield gateway


@pytest.fixture(scope="module")
def http(small_cap: Gateway) -> Iterator[httpx.Client]:
    with http_client(small_cap) as client:
        yield client


def _abandon(url: str, seed: int) -> None:
    """Send a wide tree and give up on it mid-way: a short client timeout, or (odd seeds) a
    stream that is closed before its answer."""
    body = {**WIDE, "seed": seed}
    if seed % 2:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            time.sleep(2.0)  # the answer comes at the end of the search: none has come yet
        return
    try:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=2.0)
    except httpx.ReadTimeout:
        return
    pytest.fail(f"answered before the client gave up: {response.status_code} {response.text}")


def _wait_for(http: httpx.Client, done, timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    samples = scrape_metrics(http)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = scrape_metrics(http)
    return samples


def test_cancelled_wide_trees_give_back_every_slot(small_cap: Gateway, http) -> None:
    before = scrape_metrics(http)
    assert before[JOBS_IN_FLIGHT] == 0
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda seed: _abandon(small_cap.url, seed), range(4)))
    samples = _wait_for(http, lambda s: s[CANCELLED] >= before[CANCELLED] + 4)
    assert samples[CANCELLED] >= before[CANCELLED] + 4, "the gateway missed a disconnect"

    # With leaked slots the scheduler has none left: these would wait until the request
    # timeout (504) instead of finishing.
    with ThreadPoolExecutor(2) as pool:
        responses = list(
            pool.map(lambda s: http.post("/v1/completions", json=rebase_body(seed=s)), (1, 2))
        )
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["method_details"]["rebase"][0]["leaves"] >= 1

    # Nothing left anywhere: vLLM (refreshed on its stats interval), our scheduler, our queue.
    samples = _wait_for(http, lambda s: engine_requests(s) == 0 and s[JOBS_IN_FLIGHT] == 0)
    assert engine_requests(samples) == 0
    assert samples[JOBS_IN_FLIGHT] == 0
    assert samples['thinkscale_queue_depth{method="rebase"}'] == 0
    assert samples['thinkscale_requests_in_flight{method="rebase"}'] == 0


def test_request_over_the_work_bound_is_a_400(http) -> None:
    # 2 prompts x n=16 x width 64 = 2048 engine sequences > the default 1024.
    body = rebase_body(prompt=[QUESTION, QUESTION], n=16, rebase={**SMALL_TREE, "width": 64})
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "rebase.width"
    assert "2048 engine sequences" in error["message"]
    assert "max_request_sequences=1024" in error["message"]


# Greedy: all 16 first steps are the same 6 tokens, cut by the path's token cap, so every leaf
# votes (vote_leaves "all") for the same number. At a cap of 2 the exact rule is met while
# later expansions are still queued or running: they must be withdrawn or aborted at once.
UNANIMOUS = rebase_body(
    prompt="0 1 2 3 4 5 6 7 8",  # the tiny model repeats the last number: " 8 8 8 8 8 8"
    max_tokens=6,
    temperature=0.0,
    rebase={"width": 16, "max_step_tokens": 6, "max_depth": 4, "vote_leaves": "all"},
)


def _tree(http: httpx.Client, early_stop: str, **rebase) -> tuple[dict, dict]:
    body = {**UNANIMOUS, "rebase": {**UNANIMOUS["rebase"], "early_stop": early_stop, **rebase}}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    return result, result["method_details"]["rebase"][0]


def test_exact_early_stop_same_answer_less_work_and_aborts_what_runs(http) -> None:
    full, full_tree = _tree(http, "off", shadow_stop=True)
    early, early_tree = _tree(http, "exact")
    assert full_tree["answer"] is not None, full_tree  # the workload must vote at all
    assert full_tree["ended"] == "complete" and full_tree["remaining_leaves"] == 0
    assert full_tree["shadow"]["exact"]["answer"] == full_tree["answer"]
    assert early_tree["ended"] == "decided" and early_tree["remaining_leaves"] > 0
    assert early_tree["answer"] == full_tree["answer"]
    assert early["choices"][0]["text"] == full["choices"][0]["text"]  # identical leaves
    policy_calls = [r["usage"]["components"]["policy"]["engine_calls"] for r in (early, full)]
    assert policy_calls[0] < policy_calls[1] == 16
    assert early_tree["spent"]["flops"] < full_tree["spent"]["flops"]
    assert early_tree["saved_estimate"]["flops"] > 0
    samples = _wait_for(http, lambda s: engine_requests(s) == 0 and s[JOBS_IN_FLIGHT] == 0)
    assert engine_requests(samples) == 0 and samples[JOBS_IN_FLIGHT] == 0
    ends = 'thinkscale_search_ends_total{method="rebase",reason="decided"}'
    assert samples[ends] >= 1


@pytest.mark.parametrize(
    ("early_stop", "param"),
    [("sometimes", "rebase.early_stop"), ({"confidence": 1.5}, "rebase.early_stop")],
)
def test_invalid_early_stop_is_400(http, early_stop, param) -> None:
    response = http.post("/v1/completions", json=rebase_body(rebase={"early_stop": early_stop}))
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith(param), response.text
