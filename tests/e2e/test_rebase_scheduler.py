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
