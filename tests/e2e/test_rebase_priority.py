"""End-to-end: the `priority` REBASE scheduler completes wide concurrent trees with the same
results as `direct`, and leaves the engine and the scheduler idle afterwards.

Why gateways of its own: the scheduler is a process-wide setting. The priority gateway runs
small caps (4 jobs in flight, 8 engine sequences) so that width-8 trees queue in the scheduler;
the direct gateway gets the same engine knobs and submits everything at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, http_client, running_gateway, scrape_metrics
from tests.e2e.test_rebase import engine_requests, rebase_body

pytestmark = pytest.mark.e2e

ENGINE = ("--max-num-seqs", "8")
# early_stop "off": the trees are compared whole (an early stop's point depends on timing).
WIDE = {
    "width": 8, "max_step_tokens": 6, "step_delimiter": " ", "max_depth": 6, "early_stop": "off"
}  # fmt: skip
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def priority_gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    log_path = tmp_path_factory.mktemp("gateway-priority") / "gateway.log"
    with running_gateway(
        tiny_model_dir, log_path, "--rebase-scheduler", "priority",
        "--rebase-max-in-flight", "4", *ENGINE,
    ) as gateway:  # fmt: skip
        yield gateway


def _wide_trees(http: httpx.Client) -> list[dict]:
    """The same seeded wide trees, all in flight at once; the comparable part of each answer."""
    with ThreadPoolExecutor(len(SEEDS)) as pool:
        responses = list(
            pool.map(
                lambda s: http.post(
                    "/v1/completions", json=rebase_body(seed=s, max_tokens=36, rebase=WIDE)
                ),
                SEEDS,
            )
        )
    out = []
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        tree = body["method_details"]["rebase"][0]
        assert tree["leaves"] >= 1
        # The request id differs by run; reward_calls by design (priority scores per child);
        # executed FLOPs with what the prefix cache holds.
        tree = {k: v for k, v in tree.items() if k not in ("request", "reward_calls", "spent")}
        out.append({"text": body["choices"][0]["text"], "tree": tree})
    return out


def _idle(http: httpx.Client, timeout: float = 60) -> dict[str, float]:
    """Metrics once vLLM (refreshed on its stats interval) and our scheduler say idle."""
    deadline = time.monotonic() + timeout
    samples = scrape_metrics(http)
    while time.monotonic() < deadline and (
        engine_requests(samples) or samples["thinkscale_rebase_jobs_in_flight"]
    ):
        time.sleep(0.5)
        samples = scrape_metrics(http)
    return samples


def test_priority_scheduler_grows_the_same_trees_as_direct_and_ends_idle(
    priority_gateway: Gateway, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with http_client(priority_gateway) as http:
        priority = _wide_trees(http)
        samples = _idle(http)
    assert engine_requests(samples) == 0
    assert samples["thinkscale_rebase_jobs_in_flight"] == 0
    assert samples["thinkscale_rebase_kv_reserved_blocks"] == 0
    assert samples['thinkscale_queue_depth{method="rebase"}'] == 0
    assert "thinkscale_rebase_kv_deferrals_total" in samples
    assert any(k.startswith("vllm:num_preemptions_total") for k in samples)

    with running_gateway(
        tiny_model_dir, tmp_path / "direct.log", "--rebase-scheduler", "direct", *ENGINE
    ) as direct_gateway, http_client(direct_gateway) as http:  # fmt: skip
        direct = _wide_trees(http)
    assert priority == direct
