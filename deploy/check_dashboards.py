"""Check that every Grafana panel query returns data from a real Prometheus.

Why a checker: a dashboard whose query has a typo, a wrong label or a series nobody exports
shows "No data" forever and nobody notices until an incident. This module reads the dashboard
JSON the way Grafana would (rows and nested panels, every target's `expr`, template variables
substituted), asks Prometheus's HTTP API for each query, and lists the panels that came back
empty. The end-to-end test (tests/e2e/test_observability.py) runs it against a Prometheus
scraping a real gateway; operators can run it against the compose stack:

    python deploy/check_dashboards.py --prometheus http://localhost:9090

Queries ending in `or vector(0)` are allowed only for the series in PENDING_METHOD_SERIES:
series that no registered method can produce yet. Once the method named there is served, the
query without the fallback must return data (the e2e test enforces it), and the entry goes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

DEPLOY_DIR = Path(__file__).resolve().parent
DASHBOARD_DIR = DEPLOY_DIR / "grafana" / "dashboards"

# Grafana's built-in interval variables, replaced by values that suit a 1-5 s scrape interval.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}
# A dashboard variable (e.g. $method, multi-value with "All") becomes this regex: every value.
VARIABLE_VALUE = ".*"

# Series that only a method not yet registered can produce, so their panel queries end in
# `or vector(0)` to show 0 instead of "No data": metric family -> (method that brings data,
# reason). Keep it short; the e2e test drops the fallback (and needs data) once that method is
# in server.methods.METHODS, so an entry is removed together with its fallbacks when the method
# lands. Empty now: REBASE (tree histograms, reward calls, queue depth) is served, and
# Quiet-STaR's panels read series that every method exports (thought tokens, forward tokens
# per output token). Example of an entry:
#   "thinkscale_rebase_depth": ("rebase", "histogram with a method label: no series until a
#                               REBASE request is observed"),
PENDING_METHOD_SERIES: dict[str, tuple[str, str]] = {}

FALLBACK = re.compile(r"\s+or\s+vector\(0\)\s*$")
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])(?:thinkscale_[A-Za-z0-9_]+|vllm:[A-Za-z0-9_:]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, depth first, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def substitute_variables(expr: str, variables: list[str]) -> str:
    """Replace $var, ${var}, ${var:format} and [[var]] as Grafana would for an "All" selection."""
    values = {name: VARIABLE_VALUE for name in variables} | BUILTIN_VARIABLES
    # Longest names first so $__rate_interval is not read as $__rate + "_interval".
    names = "|".join(re.escape(n) for n in sorted(values, key=len, reverse=True))
    pattern = re.compile(
        rf"\$\{{({names})(?::[^}}]*)?\}}|\[\[({names})\]\]|\$({names})(?![A-Za-z0-9_])"
    )
    return pattern.sub(lambda m: values[next(g for g in m.groups() if g)], expr)


def variable_query(variable: dict) -> str | None:
    """The instant query behind a `label_values(metric, label)` variable (values exist iff data)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if not isinstance(query, str):
        return None
    m = re.fullmatch(r"\s*label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if not m:
        return None
    return f"count by ({m.group(2)}) ({m.group(1)})"


def load_dashboard(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def dashboard_queries(path: str | Path) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel, variables substituted.

    Template variables whose values come from a `label_values(...)` query are included as
    ("variable $name", query) so an empty variable drop-down is caught too.
    """
    dashboard = load_dashboard(path)
    variables = dashboard.get("templating", {}).get("list", [])
    names = [v["name"] for v in variables]
    queries: list[tuple[str, str]] = []
    for variable in variables:
        expr = variable_query(variable)
        if expr is not None:
            queries.append((f"variable ${variable['name']}", substitute_variables(expr, names)))
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                title = panel.get("title") or f"panel {panel.get('id')}"
                queries.append((title, substitute_variables(expr, names)))
    return queries


def all_dashboard_queries(directory: str | Path = DASHBOARD_DIR) -> list[tuple[str, str, str]]:
    """(dashboard file name, panel title, expr) for every dashboard JSON in `directory`."""
    return [
        (path.name, title, expr)
        for path in sorted(Path(directory).glob("*.json"))
        for title, expr in dashboard_queries(path)
    ]


def metric_names(expr: str) -> set[str]:
    """The `thinkscale_*` and `vllm:*` metric (sample) names an expression reads."""
    return set(METRIC_NAME.findall(expr))


def base_metric_name(name: str) -> str:
    """thinkscale_x_bucket/_sum/_count/_total -> thinkscale_x (the registered family name)."""
    for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def strip_fallback(expr: str) -> str | None:
    """The expression without its trailing `or vector(0)`, or None if it has none."""
    if not FALLBACK.search(expr):
        return None
    core = FALLBACK.sub("", expr).strip()
    if core.startswith("(") and core.endswith(")") and _balanced(core[1:-1]):
        core = core[1:-1].strip()
    return core


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def pending_method(expr: str) -> str | None:
    """For an `or vector(0)` query: the method whose arrival must make its core return data."""
    families = {base_metric_name(n) for n in metric_names(expr)}
    methods = {PENDING_METHOD_SERIES[f][0] for f in families if f in PENDING_METHOD_SERIES}
    return min(methods) if methods else None


def query_prometheus(prom_url: str, expr: str, *, timeout: float = 10.0) -> list:
    """Instant query via /api/v1/query; the result list (a scalar/string comes back as [value])."""
    response = httpx.get(
        f"{prom_url.rstrip('/')}/api/v1/query", params={"query": expr}, timeout=timeout
    )
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise ValueError(f"Prometheus rejected {expr!r}: {body.get('error', response.text)}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [data["result"]]
    return data["result"]


def empty_queries(
    prom_url: str, queries: list[tuple[str, str, str]]
) -> list[tuple[str, str, str, str]]:
    """(dashboard, panel, expr, why) for every query that errors or returns nothing."""
    failures = []
    for dashboard, title, expr in queries:
        try:
            result = query_prometheus(prom_url, expr)
        except (ValueError, httpx.HTTPError) as exc:
            failures.append((dashboard, title, expr, str(exc)))
            continue
        if not result:
            failures.append((dashboard, title, expr, "empty result"))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://localhost:9090")
    parser.add_argument("--dashboards", default=str(DASHBOARD_DIR))
    args = parser.parse_args(argv)
    queries = all_dashboard_queries(args.dashboards)
    failures = empty_queries(args.prometheus, queries)
    for dashboard, title, expr, why in failures:
        print(f"NO DATA  {dashboard} / {title}: {why}\n         {expr}")
    print(f"{len(queries) - len(failures)} of {len(queries)} panel queries returned data")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
