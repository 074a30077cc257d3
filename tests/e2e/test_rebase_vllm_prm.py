"""End-to-end: REBASE scored by a model PRM on its own vLLM engine, under every scheduler.

Why a gateway per scheduler: the scheduler is a process-wide setting, and each one routes the
PRM's scoring calls its own way (`priority` under its own bound on PRM calls, `fair` and
`direct` through the tree's scheduler). The PRM is the tiny Math-Shepherd-style checkpoint of
tests/e2e/test_vllm_prm.py, so the gateway starts a second, pooling-mode engine beside the
policy. One request per gateway: each start costs two engine start-ups.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway, completion_ok, http_client, running_gateway, scrape_metrics
from tests.e2e.test_rebase import SMALL_TREE, rebase_body
from tests.e2e.test_vllm_prm import build_tiny_math_shepherd

pytestmark = pytest.mark.e2e

# Each case starts a gateway with two engines (~1 min): `priority`, the scheduler that had the bug,
# runs by default; the other two with `-m slow` (make test-all).
SCHEDULERS = (
    "priority",
    pytest.param("fair", marks=pytest.mark.slow),
    pytest.param("direct", marks=pytest.mark.slow),
)


@pytest.fixture(scope="module")
def prm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_math_shepherd(tmp_path_factory.mktemp("tiny-math-shepherd"))


@pytest.fixture(scope="module", params=SCHEDULERS)
def prm_gateway(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    prm_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Gateway]]:
    scheduler = request.param
    log_path = tmp_path_factory.mktemp(f"gateway-prm-{scheduler}") / "gateway.log"
    with running_gateway(
        tiny_model_dir, log_path, "--rebase-scheduler", scheduler,
        "--reward-model", "vllm_prm", "--prm-model", str(prm_model_dir),
    ) as gateway:  # fmt: skip
        yield scheduler, gateway


def test_rebase_is_scored_by_the_model_prm(prm_gateway: tuple[str, Gateway]) -> None:
    """A 200 with an answer, and the PRM engine really scored every node of the tree: one PRM
    engine call per expanded node, charged to the reward component and counted in /metrics."""
    scheduler, gateway = prm_gateway
    body = rebase_body(seed=7, rebase={**SMALL_TREE, "reward_model": "vllm_prm"})
    calls = 'thinkscale_reward_calls_total{method="rebase",reward_model="vllm_prm"}'
    with http_client(gateway) as http:
        before = scrape_metrics(http).get(calls, 0.0)  # the start-up warm-up scores too
        data = completion_ok(http, body)
        after = scrape_metrics(http)[calls]
    assert data["choices"][0]["text"], scheduler
    stats = data["method_details"]["rebase"][0]
    assert stats["reward_model"] == "vllm_prm"
    assert stats["leaves"] >= 1 and stats["reward_calls"] >= 1
    usage = data["usage"]
    reward = usage["components"]["reward"]
    # Every node is scored exactly once, one PRM engine call per path, whichever scheduler.
    assert reward["engine_calls"] == stats["nodes_expanded"]
    assert usage["forward_tokens_reward"] > 0
    assert usage["flops"]["reward_executed"] > 0
    assert usage["engine_calls"] == 2 * stats["nodes_expanded"]  # one policy call per node too
    assert after - before == stats["reward_calls"]
