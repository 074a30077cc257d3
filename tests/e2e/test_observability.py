"""Every Grafana panel returns data from a real Prometheus scraping a real gateway.

Why end to end: a dashboard is only as good as its queries, and a query can only be judged by
a real Prometheus (PromQL semantics, rate windows, label sets) against the series the gateway
really exports after real traffic. This test starts `prometheus` (Debian package; `.ci/run`
installs it) scraping the session gateway every second, sends a little traffic of every
registered method, and runs deploy/check_dashboards.py's queries.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Gateway, free_port

pytestmark = pytest.mark.e2e

PROMPT = "Q: What is 2 + 3? A: Let's think step by step."
SCRAPE_WAIT_S = 60  # bound for Prometheus to see the gateway / the traffic
QUERY_WAIT_S = 60  # bound for all dashboard queries to return data (rate windows fill)


def _load_checker():
    path = REPO / "deploy" / "check_dashboards.py"
    spec = importlib.util.spec_from_file_location("check_dashboards", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_dashboards", module)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the session gateway every second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "the `prometheus` binary is not installed (Debian: apt-get install prometheus; "
            ".ci/run installs it)"
        )
    workdir = tmp_path_factory.mktemp("prometheus")
    target = gateway.url.removeprefix("http://")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: thinkscale\n    static_configs:\n"
        f"      - targets: [{json.dumps(target)}]\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, SCRAPE_WAIT_S, "prometheus to be ready")
        # One successful scrape before any traffic, so rate() sees the increase.
        wait_for(
            lambda: bool(checker.query_prometheus(url, 'up{job="thinkscale"} == 1')),
            SCRAPE_WAIT_S,
            "prometheus's first successful scrape of the gateway",
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Call:
    body: dict
    expect_status: int = 200
    stream: bool = False


def traffic_plan(methods: list[str]) -> list[Call]:
    """Baseline traffic (plain, streamed, an error) plus one request of every other method."""
    calls = [Call({"method": "baseline", "prompt": PROMPT, "max_tokens": 8}) for _ in range(3)]
    calls.append(
        Call(
            {
                "method": "baseline",
                "prompt": PROMPT,
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            stream=True,
        )
    )
    calls += [
        Call({"method": name, "prompt": PROMPT, "max_tokens": 8})
        for name in methods
        if name != "baseline"
    ]
    calls.append(
        Call({"method": "no-such-method", "prompt": PROMPT, "max_tokens": 8}, expect_status=400)
    )
    return calls


def send(http: httpx.Client, call: Call) -> None:
    if call.stream:
        with http.stream("POST", "/v1/completions", json=call.body) as response:
            body = response.read().decode()
            assert response.status_code == call.expect_status, body
            assert "data: [DONE]" in body
        return
    response = http.post("/v1/completions", json=call.body)
    assert response.status_code == call.expect_status, (call.body, response.text)


@dataclass
class GatewayMetrics:
    text: str
    names: set[str] = field(default_factory=set)
    requests_total: float = 0.0


def scrape_gateway(http: httpx.Client) -> GatewayMetrics:
    """The gateway's /metrics: every exported sample name (also of families with no child yet)."""
    text = http.get("/metrics").text
    result = GatewayMetrics(text)
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        result.names.update(family.name + suffix for suffix in suffixes)
        for sample in family.samples:
            result.names.add(sample.name)
            if sample.name == "thinkscale_requests_total":
                result.requests_total += sample.value
    return result


def has_data(result: list) -> bool:
    """Non-empty with at least one number (a NaN-only result shows as "No data" in Grafana)."""
    for item in result:
        value = item["value"][1] if isinstance(item, dict) else item[1]
        if not math.isnan(float(value)):
            return True
    return False


@pytest.fixture(scope="module")
def after_traffic(prometheus: str, http: httpx.Client) -> GatewayMetrics:
    from server.methods import METHODS

    # Two rounds: a series born in round 1 (a histogram's first observation of a method) is
    # first scraped with its count already > 0, which rate() cannot see as an increase; round
    # 2 increases it between two scrapes, as steady traffic does in production.
    for _ in range(2):
        for call in traffic_plan(list(METHODS)):
            send(http, call)
        exported = scrape_gateway(http)

        def scraped(total: float = exported.requests_total) -> bool:
            result = checker.query_prometheus(prometheus, "sum(thinkscale_requests_total)")
            return bool(result) and float(result[0]["value"][1]) >= total

        wait_for(scraped, SCRAPE_WAIT_S, "prometheus to scrape the traffic")
    return exported


def test_every_dashboard_query_returns_data(prometheus: str, after_traffic: GatewayMetrics):
    from server.methods import METHODS

    queries = checker.all_dashboard_queries()
    assert queries, "no dashboard queries found"
    pending: dict[tuple[str, str, str], str] = {}
    for dashboard, title, expr in queries:
        core = checker.strip_fallback(expr)
        method = checker.pending_method(expr) if core is not None else None
        if core is not None and method in METHODS:
            # The method that brings this series is served now: the fallback must not hide
            # a broken query. Drop `or vector(0)` and the PENDING_METHOD_SERIES entry.
            expr = core
        pending[(dashboard, title, expr)] = "empty result"

    deadline = time.monotonic() + QUERY_WAIT_S
    while pending and time.monotonic() < deadline:
        for key in list(pending):
            try:
                result = checker.query_prometheus(prometheus, key[2])
            except ValueError as exc:
                pending[key] = str(exc)
                continue
            if has_data(result):
                del pending[key]
            else:
                pending[key] = f"no number in result {result}"[:300]
        if pending:
            time.sleep(1)

    report = "\n".join(
        f"- {dashboard} / {title}: {why}\n    {expr}"
        for (dashboard, title, expr), why in pending.items()
    )
    assert not pending, (
        f"{len(pending)} of {len(queries)} dashboard queries return no data:\n{report}"
    )


def test_dashboard_metric_names_exist_in_gateway_metrics(after_traffic: GatewayMetrics):
    missing = sorted(
        (name, dashboard, title)
        for dashboard, title, expr in checker.all_dashboard_queries()
        for name in checker.metric_names(expr)
        if name not in after_traffic.names
    )
    assert not missing, "metrics named in dashboards but not exported by the gateway:\n" + (
        "\n".join(f"- {name} ({dashboard} / {title})" for name, dashboard, title in missing)
    )
