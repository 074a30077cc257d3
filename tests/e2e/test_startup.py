"""End-to-end: the gateway is never healthy before its engine ran, and both dtypes are served.

Each test starts its own gateway on the tiny model with the dtype it is about (the shared
fixture pins float32). The SIGILL seen on some bf16 CPUs cannot be reproduced on demand, so
a test-only fault (`--test-fault`) kills the engine core with SIGILL during the warm-up, or
makes the bf16 probe die with it; docs/architecture.md, "Start-up".
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import httpx
import pytest

from loadtest.harness import servers
from loadtest.harness.servers import EngineSettings
from server.core.config import has_native_bf16
from tests.conftest import scrape_metrics

pytestmark = pytest.mark.e2e

KV_GIB = 1  # the shared fixture's: the crash seen on an AMX Xeon needed a small KV cache
PROMPT = "Q: What is 2 + 3?\nA:"


def engine(model_dir: Path, dtype: str | None) -> EngineSettings:
    return EngineSettings(
        model=str(model_dir),
        served_name="tiny",
        max_model_len=1024,
        kv_cache_gib=KV_GIB,
        dtype=dtype,
        block_size=None,
        max_num_seqs=None,
        seed=None,
    )


def engine_info(gw: servers.ServerProcess) -> dict[str, str]:
    """The labels of `thinkscale_engine_info` on the gateway's /metrics."""
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        (key,) = [k for k in scrape_metrics(http) if k.startswith("thinkscale_engine_info{")]
    labels = key[key.index("{") + 1 : -1]
    return {name: value.strip('"') for name, value in (p.split("=", 1) for p in labels.split(","))}


def serves_every_method(gw: servers.ServerProcess) -> None:
    with httpx.Client(base_url=gw.url, timeout=300) as http:
        for body in (
            {"method": "baseline"},
            {"method": "quiet_star", "quiet_star": {"thought_tokens": 2}},
            {"method": "rebase", "rebase": {"width": 2, "max_depth": 2, "max_step_tokens": 4}},
        ):
            response = http.post(
                "/v1/completions",
                json={"prompt": PROMPT, "max_tokens": 6, "ignore_eos": True, **body},
            )
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["forward_tokens"] > 0


def test_an_engine_killed_with_sigill_during_the_warm_up_fails_the_start(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Never a 200 followed by a dead engine: the gateway exits non-zero and says why."""
    log = tmp_path / "gateway.log"
    port = servers.free_port()
    command = servers.gateway_command(
        engine(tiny_model_dir, "float32"), port, "--test-fault", "engine_sigill_at_warmup"
    )
    env = {"THINKSCALE_KV_CACHE_GIB": str(KV_GIB), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=servers.REPO,
        env={**servers.os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    healthy = False
    try:
        while process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                healthy |= (
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
                )
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
    finally:
        if process.poll() is None:
            process.kill()
    stderr = log.read_text(errors="replace")
    assert process.returncode not in (0, None), stderr[-3000:]
    assert not healthy, "the gateway said healthy before its engine ran"
    (message,) = [line for line in stderr.splitlines() if line.startswith("thinkscale: ")]
    assert "warm-up" in message
    assert f"model {tiny_model_dir}" in message
    assert "dtype float32" in message
    assert f"KV cache {KV_GIB} GiB" in message
    assert "SIGILL" in message


def test_bfloat16_serves_every_method_where_the_cpu_runs_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The bf16 path on purpose, with the small KV cache that crashed an AMX Xeon."""
    try:
        gw = servers.start_gateway(engine(tiny_model_dir, "bfloat16"), tmp_path / "gw.log")
    except RuntimeError as exc:
        if "SIGILL" in str(exc):
            pytest.skip(f"this CPU's vLLM kernels die with SIGILL in bfloat16: {str(exc)[-300:]}")
        raise
    with gw:
        assert engine_info(gw)["dtype"] == "bfloat16"
        serves_every_method(gw)


def test_the_default_cpu_dtype_is_bf16_only_after_the_probe(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No --dtype: float32 on a CPU without native bf16; with it, bf16 if the probe ran."""
    with servers.start_gateway(engine(tiny_model_dir, None), tmp_path / "gw.log") as gw:
        info = engine_info(gw)
        assert info["cpu_native_bf16"] == str(has_native_bf16()).lower()
        if not has_native_bf16():
            assert info["dtype"] == "float32"
        else:
            assert info["dtype"] in ("bfloat16", "float32")
            if info["dtype"] == "float32":  # the probe failed: the warning says why
                assert "not bfloat16" in gw.log()
        serves_every_method(gw)


def test_a_failed_bf16_probe_falls_back_to_float32_with_the_reason(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The probe dies with SIGILL (test fault; it runs on every CPU then): float32, a warning
    that names the signal, and a gateway that serves."""
    with servers.start_gateway(
        engine(tiny_model_dir, None), tmp_path / "gw.log", "--test-fault", "bf16_probe_sigill"
    ) as gw:
        assert engine_info(gw)["dtype"] == "float32"
        warning = [line for line in gw.log().splitlines() if "CPU dtype: float32" in line]
        assert warning and "SIGILL" in warning[0], gw.log()[-3000:]
        serves_every_method(gw)
