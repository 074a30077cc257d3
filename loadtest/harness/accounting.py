"""The accounting identity as a measurement-time check: does a run's charge add up?

Why: per-request FLOPs are what thinkscale reports, so a measured run should show that the
gateway charged exactly what its engine counted. Over a window with only the run's traffic,
the increase of vLLM's `vllm:iteration_tokens_total_sum` equals the gateway's
`thinkscale_engine_tokens_total` (its forward tokens + the calls that emitted a token - the
forward tokens of calls cut before their first output), when no request was preempted
(docs/architecture.md, "Accounting identity"). Both are summed over the engines of the
server's process (a `vllm_prm` reward engine counts into `thinkscale_prm_iteration_tokens_total`);
a server without the gateway's series (`vllm serve`) is reported as unchecked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loadtest.harness.metrics import metric_total, scrape_metrics

VLLM_TOKENS = "vllm:iteration_tokens_total_sum"
REMOTE_NOTE = "a remote-engine gateway: vLLM's counters are on the replicas"
PRM_TOKENS = "thinkscale_prm_iteration_tokens_total"
GATEWAY_TOKENS = "thinkscale_engine_tokens_total"
FORWARD = ("thinkscale_tokens_total", 'kind="forward"')
PREEMPTIONS = "vllm:num_preemptions_total"
BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def idle_samples(
    url: str,
    *,
    timeout_s: float = 60.0,
    poll_s: float = 1.0,
    scrape: Callable[[str], dict[str, float]] = scrape_metrics,
) -> dict[str, float]:
    """/metrics once nothing runs or waits and vLLM's token counter stopped moving (vLLM
    publishes it after the outputs that end a request); the last scrape after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        samples = scrape(url)
        busy = sum(metric_total(samples, name) for name in BUSY)
        now = metric_total(samples, VLLM_TOKENS)
        if (busy == 0 and now == last) or time.monotonic() >= deadline:
            return samples
        last = now
        time.sleep(poll_s)


def check(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Both totals over the window and whether they add up (None: not checkable)."""

    def moved(name: str, label: str | None = None) -> float:
        return metric_total(after, name, label) - metric_total(before, name, label)

    out: dict[str, Any] = {
        # the policy engine's own count, plus a PRM engine's (its own stat logger)
        "vllm_iteration_tokens": moved(VLLM_TOKENS) + moved(PRM_TOKENS),
        "gateway_engine_tokens": moved(GATEWAY_TOKENS),
        "gateway_forward_tokens": moved(*FORWARD),
        "preemptions": moved(PREEMPTIONS),
    }
    if not any(k.startswith(GATEWAY_TOKENS) for k in after):
        return {**out, "matches": None, "note": "the server exports no gateway accounting"}
    if not any(k.startswith(VLLM_TOKENS) for k in after):
        # A remote-engine gateway: vLLM's counters are on its replicas, not in this process.
        return {**out, "matches": None, "note": REMOTE_NOTE}
    if out["preemptions"]:
        return {**out, "matches": None, "note": "requests were preempted: recompute is uncounted"}
    matches = out["vllm_iteration_tokens"] == out["gateway_engine_tokens"]
    note = "" if matches else "the gateway's charge and vLLM's count differ"
    return {**out, "matches": matches, "note": note}


class Window:
    """Scrape before a measured run and after it (idle): `with Window(url) as w: ...; w.result`.

    Scrape failures never fail the run: the result then says why it is unchecked."""

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.before: dict[str, float] | None = None
        self.result: dict[str, Any] = {"matches": None, "note": "not measured"}

    def __enter__(self) -> Window:
        try:
            self.before = idle_samples(self.url, timeout_s=self.timeout_s)
        except Exception as exc:  # the run goes on unchecked
            self.result = {"matches": None, "note": f"cannot scrape /metrics: {exc}"}
        return self

    def __exit__(self, *exc_info) -> None:
        if self.before is None:
            return
        try:
            self.result = check(self.before, idle_samples(self.url, timeout_s=self.timeout_s))
        except Exception as exc:
            self.result = {"matches": None, "note": f"cannot scrape /metrics: {exc}"}


def report_line(result: dict[str, Any]) -> str:
    """One Markdown line for a report: the two totals, and a loud flag when they differ."""
    if result.get("matches") is None:
        return f"Accounting: not checked ({result.get('note') or 'no data'})."
    totals = (
        f"gateway {result['gateway_engine_tokens']:.0f} engine tokens, "
        f"vLLM {result['vllm_iteration_tokens']:.0f} iteration tokens"
    )
    if result["matches"]:
        return f"Accounting: {totals}: they add up."
    return f"**Accounting MISMATCH**: {totals}; the run's FLOPs are not what the engine ran."


def sessions_line(sessions: list[dict[str, Any]]) -> str | None:
    """A report line over benchmark sessions that recorded `accounting` (None when none did,
    e.g. a result file written before the check existed)."""
    checked = [s for s in sessions if s.get("accounting", {}).get("matches") is not None]
    if not checked:
        return None
    bad = [
        f"{s.get('side')} round {s.get('round')}" for s in checked if not s["accounting"]["matches"]
    ]
    if bad:
        return f"- **accounting MISMATCH** (gateway charge != vLLM's count): {', '.join(bad)}"
    return f"- accounting: every checked session's charge adds up to vLLM's count ({len(checked)})"
