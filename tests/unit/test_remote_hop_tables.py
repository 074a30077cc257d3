"""remote_hop's summary and tables with the per-token remote side (synthetic sessions)."""

from __future__ import annotations

from loadtest.benchmarks.remote_hop import PER_TOKEN_SIDE, summary, tables


def _session(side: str, rnd: int, rps: float, calls: float) -> dict:
    method = {
        "requests_per_s": rps,
        "p50_latency_s": 1 / rps,
        "p95_latency_s": 2 / rps,
        "engine_calls_per_request": calls,
    }
    return {"side": side, "round": rnd, "methods": {"quiet_star": method}}


def test_each_remote_side_is_compared_with_in_process() -> None:
    sessions = [
        s
        for r in range(3)
        for s in (
            _session("inprocess", r, 2.0 + r * 0.1, 1),
            _session("remote", r, 1.9 + r * 0.1, 1),
            _session(PER_TOKEN_SIDE, r, 1.0 + r * 0.1, 8),
        )
    ]
    payload = {
        "summary": summary(sessions, ["quiet_star"]),
        "summary_per_token": summary(sessions, ["quiet_star"], PER_TOKEN_SIDE),
    }
    assert payload["summary"]["quiet_star"]["requests_per_s"]["ratio"] == 2.0 / 2.1
    assert payload["summary_per_token"]["quiet_star"]["requests_per_s"]["ratio"] == 1.1 / 2.1
    assert set(tables(payload)) == {"remote_hop.quiet_star", "remote_hop.quiet_star.per_token"}
    out = tables({**payload, "table_prefix": "remote_hop_qs_c8"})  # named after the result file
    out = {k.replace("remote_hop_qs_c8", "remote_hop"): v for k, v in out.items()}
    assert "remote, per token" in out["remote_hop.quiet_star.per_token"]
    assert "| engine calls/req | 1.0 | 8.0 | 8.000 |" in (out["remote_hop.quiet_star.per_token"])
