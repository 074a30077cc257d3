"""The measurement-time accounting check (loadtest/harness/accounting.py) on synthetic scrapes."""

from __future__ import annotations

from loadtest.harness import accounting

ENGINE = 'thinkscale_engine_tokens_total{component="policy",method="baseline"}'
VLLM = 'vllm:iteration_tokens_total_sum{engine="0",model_name="m"}'


def samples(vllm: float, ours: float, preempted: float = 0.0) -> dict[str, float]:
    return {
        VLLM: vllm,
        ENGINE: ours,
        'thinkscale_tokens_total{kind="forward",method="baseline"}': ours - 1,
        'vllm:num_preemptions_total{engine="0"}': preempted,
        "vllm:num_requests_running": 0.0,
    }


def test_totals_that_add_up_match() -> None:
    result = accounting.check(samples(100, 90), samples(150, 140))
    assert result["matches"] is True
    assert result["vllm_iteration_tokens"] == result["gateway_engine_tokens"] == 50
    assert "add up" in accounting.report_line(result)


def test_a_mismatch_is_flagged_loudly() -> None:
    result = accounting.check(samples(100, 90), samples(150, 139))
    assert result["matches"] is False
    assert "MISMATCH" in accounting.report_line(result)
    line = accounting.sessions_line([{"side": "fair8", "round": 2, "accounting": result}])
    assert line is not None and "MISMATCH" in line and "fair8 round 2" in line


def test_preemption_or_a_plain_vllm_server_leaves_it_unchecked() -> None:
    assert accounting.check(samples(0, 0), samples(10, 10, preempted=1))["matches"] is None
    plain = {VLLM: 5.0}
    result = accounting.check(plain, {VLLM: 9.0})
    assert result["matches"] is None and "not checked" in accounting.report_line(result)
    assert accounting.sessions_line([{"side": "a"}]) is None  # results older than the check


def test_idle_samples_waits_for_the_counter_to_settle() -> None:
    scrapes = iter([samples(10, 10), samples(12, 12), samples(12, 12)])
    got = accounting.idle_samples("http://x", poll_s=0, scrape=lambda url: next(scrapes))
    assert got[VLLM] == 12


def test_a_server_that_cannot_be_scraped_does_not_fail_the_run() -> None:
    with accounting.Window("http://127.0.0.1:9", timeout_s=1) as window:
        pass
    assert window.result["matches"] is None and "cannot scrape" in window.result["note"]


def test_a_benchmark_gateway_lifetime_is_one_checked_window(tmp_path, monkeypatch) -> None:
    """In a benchmark run every gateway the harness stops closes an accounting window, and
    the result's provenance says whether each added up."""
    import subprocess
    import sys

    from loadtest.harness import accounting as acc
    from loadtest.harness import provenance
    from loadtest.harness.servers import ServerProcess

    provenance.reset()
    before = {"vllm:iteration_tokens_total_sum": 10.0, "thinkscale_engine_tokens_total": 10.0}
    after = {"vllm:iteration_tokens_total_sum": 25.0, "thinkscale_engine_tokens_total": 24.0}
    monkeypatch.setattr(acc, "idle_samples", lambda url, **kw: after)
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    server = ServerProcess("gateway", "http://127.0.0.1:9", process, tmp_path / "log", [])
    server.accounting_before = before
    server.stop(timeout=5)
    summary = provenance.accounting_summary()
    assert summary["windows"] == 1 and summary["checked"] == 1
    (bad,) = summary["mismatches"]
    assert bad["vllm_iteration_tokens"] == 15 and bad["gateway_engine_tokens"] == 14
    server.stop(timeout=5)  # stopping twice closes no second window
    assert provenance.accounting_summary()["windows"] == 1
    provenance.reset()


def test_a_remote_engine_gateway_is_unchecked_not_a_mismatch() -> None:
    """Its process has no vLLM counters (they are on the replicas): nothing to compare."""
    remote = {k: v for k, v in samples(0, 90).items() if not k.startswith("vllm:")}
    after = {**remote, ENGINE: 140.0}
    result = accounting.check(remote, after)
    assert result["matches"] is None and result["note"] == accounting.REMOTE_NOTE


def test_the_docs_note_does_not_count_remote_windows_as_mismatches() -> None:
    """Results recorded before the check knew remote gateways: such a window (vLLM counted 0
    in the gateway's process while it charged work) is reported as unchecked; a real
    mismatch (vLLM counted something else) still shows."""
    from loadtest.docs import accounting_note

    remote = {"kind": "gateway", "vllm_iteration_tokens": 0, "gateway_engine_tokens": 6600.0}
    real = {"kind": "gateway", "vllm_iteration_tokens": 50, "gateway_engine_tokens": 49.0}
    clean = {"accounting": {"windows": 3, "checked": 3, "mismatches": [remote, remote]}}
    note = accounting_note(clean)
    assert "MISMATCH" not in note and "adds up (1 gateway)" in note and "unchecked" in note
    bad = {"accounting": {"windows": 3, "checked": 3, "mismatches": [remote, real]}}
    assert "MISMATCH** in 1 of 2 gateways" in accounting_note(bad)
