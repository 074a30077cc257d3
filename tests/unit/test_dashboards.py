"""Static checks of the Grafana dashboards and Prometheus config (no servers, milliseconds).

Why: the end-to-end check needs an engine and a Prometheus; these catch the cheap mistakes
first: broken JSON, a panel on the wrong datasource, a target without a query, a metric name
that server/core/metrics.py does not register, a label that would explode cardinality.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import server.core.metrics  # noqa: F401  (registers our collectors)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# Labels with a bounded set of values; anything else (request ids, prompts, users) is a bug.
BOUNDED_LABELS = {
    "method", "status", "component", "accounting", "kind", "reward_model", "le",
    "reason", "budget",  # early stops and budget cuts: fixed sets of values
    # vLLM's own labels
    "model_name", "engine",
    # Prometheus's scrape target: bounded by the replicas deployed (docs/scaling.md)
    "instance",
}  # fmt: skip


def _load_checker():
    path = DEPLOY / "check_dashboards.py"
    spec = importlib.util.spec_from_file_location("check_dashboards", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_dashboards", module)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def provisioned_datasource_uid() -> str:
    files = sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml"))
    sources = [ds for f in files for ds in yaml.safe_load(f.read_text())["datasources"]]
    assert len(sources) == 1, sources
    assert sources[0]["type"] == "prometheus"
    return sources[0]["uid"]


def registered_sample_names() -> dict[str, tuple[str, ...]]:
    """Every thinkscale_* sample name in the default registry (what /metrics serves) -> labels.

    Importing server.core.metrics registers our collectors; `_names_to_collectors` (no public
    accessor in prometheus-client) lists each one's sample names: _total, _bucket, _sum, ...
    """
    return {
        name: tuple(getattr(collector, "_labelnames", ()))
        for name, collector in REGISTRY._names_to_collectors.items()
        if name.startswith("thinkscale_")
    }


def panels(path: Path) -> list[dict]:
    return list(checker.iter_panels(json.loads(path.read_text())["panels"]))


def test_both_dashboards_exist_and_parse():
    assert {p.name for p in DASHBOARDS} >= {"overview.json", "methods.json"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_uses_the_provisioned_datasource(path: Path):
    uid = provisioned_datasource_uid()
    dashboard = json.loads(path.read_text())
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]
    graph_panels = [p for p in panels(path) if p["type"] != "row"]
    assert graph_panels
    for panel in graph_panels:
        assert panel.get("datasource", {}).get("uid") == uid, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target.get("datasource", {}).get("uid", uid) == uid, panel["title"]
            assert target.get("expr", "").strip(), f"{panel['title']} {target.get('refId')}"
        assert panel.get("description"), f"{panel['title']}: say what it tells an operator"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_have_no_unsubstituted_variables(path: Path):
    for title, expr in checker.dashboard_queries(path):
        assert "$" not in expr and "[[" not in expr, (title, expr)


def test_substitution_covers_grafana_syntaxes():
    expr = 'rate(x{m=~"$method", n=~"${method}", o=~"${method:regex}", p=~"[[method]]"}'
    expr += "[$__rate_interval]) + y[$__range] + $methodology"
    out = checker.substitute_variables(expr, ["method"])
    assert out == 'rate(x{m=~".*", n=~".*", o=~".*", p=~".*"}[1m]) + y[5m] + $methodology'


def test_every_thinkscale_metric_in_dashboards_is_registered():
    registered = registered_sample_names()
    unknown = sorted(
        (name, dashboard, title)
        for dashboard, title, expr in checker.all_dashboard_queries()
        for name in checker.metric_names(expr)
        if name.startswith("thinkscale_") and name not in registered
    )
    assert not unknown, f"not in server/core/metrics.py: {unknown}"


def test_no_per_request_labels():
    for name, labels in registered_sample_names().items():
        assert set(labels) <= BOUNDED_LABELS, (name, labels)
    label_use = re.compile(
        r"(?:by|without)\s*\(([^)]*)\)|([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\""
    )
    for dashboard, title, expr in checker.all_dashboard_queries():
        for grouping, matcher in label_use.findall(expr):
            used = [s.strip() for s in grouping.split(",") if s.strip()] or [matcher]
            assert set(used) <= BOUNDED_LABELS, (dashboard, title, used)


def test_zero_fallback_only_for_series_of_methods_not_yet_served():
    """`or vector(0)` may hide a broken query: only the short PENDING_METHOD_SERIES list may."""
    for dashboard, title, expr in checker.all_dashboard_queries():
        families = {checker.base_metric_name(n) for n in checker.metric_names(expr)}
        pending = families & set(checker.PENDING_METHOD_SERIES)
        if checker.strip_fallback(expr) is not None:
            assert pending, f"{dashboard} / {title}: `or vector(0)` on {families}"
            assert "vector(0)" not in checker.strip_fallback(expr)
        else:
            assert not pending, f"{dashboard} / {title}: {pending} needs `or vector(0)` for now"
        if "vector(" in expr:
            assert checker.strip_fallback(expr) is not None, (title, expr)
    registered = registered_sample_names()
    for family, (method, reason) in checker.PENDING_METHOD_SERIES.items():
        assert family in registered, f"PENDING_METHOD_SERIES names unknown metric {family}"
        assert method and reason


def test_prometheus_scrapes_the_gateway_every_5s():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "thinkscale"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]


def test_compose_wires_prometheus_and_grafana_to_deploy():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"gateway", "gateway-cpu", "prometheus", "grafana"} <= set(services)
    for name in ("gateway", "gateway-cpu"):
        networks = services[name].get("networks", {})
        aliases = [a for net in networks.values() for a in (net or {}).get("aliases", [])]
        assert name == "gateway" or "gateway" in aliases, name
    prom_volumes = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus.yml" in prom_volumes
    grafana_volumes = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning" in grafana_volumes
    assert "./deploy/grafana/dashboards" in grafana_volumes
