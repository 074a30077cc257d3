"""Gateway pieces without an engine: request schema, error mapping, settings, engine args,
incremental detokenization, stream merging."""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server.api.errors import validation_error
from server.api.protocol import CompletionRequest
from server.core import config
from server.core.config import Settings, default_cpu_threads_bind, resolve_hardware_defaults
from server.engines.inprocess import build_engine_args, engine_env
from server.methods.detokenize import IncrementalText
from server.methods.streams import merge_streams


def test_prompt_forms_normalise_to_a_list() -> None:
    assert CompletionRequest(prompt="hi").prompts == ["hi"]
    assert CompletionRequest(prompt=["a", "b"]).prompts == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts == [[1, 2, 3]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts == [[1], [2, 3]]


def test_unknown_keys_are_kept_as_method_blocks() -> None:
    request = CompletionRequest(prompt="x", method="rebase", rebase={"width": 2})
    assert request.method_blocks == {"rebase": {"width": 2}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stop": ["ok", ""]}, "stop"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"prompt": "x", "stream": True, "stream_options": {"include_usage": 3}},
            "stream_options.include_usage",
        ),
        ({"prompt": [[]]}, "prompt"),
    ],
)
def test_validation_errors_name_the_field(body, field) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
    error = validation_error(RequestValidationError(errors))
    assert error.param == field
    assert error.status == 400
    assert field in error.message


def test_cpu_defaults_pick_float32_block_32_and_eager(monkeypatch) -> None:
    monkeypatch.setattr(config, "has_native_bf16", lambda: False)
    settings = resolve_hardware_defaults(Settings(device="cpu"))
    assert settings.block_size == 32 and settings.enforce_eager is True
    assert settings.dtype == "float32"
    assert settings.quiet_star_engine == "continuation"


def test_cpu_with_native_bf16_leaves_the_dtype_to_the_probe(monkeypatch) -> None:
    monkeypatch.setattr(config, "has_native_bf16", lambda: True)
    assert resolve_hardware_defaults(Settings(device="cpu")).dtype is None
    # the operator's choice always wins, and no probe runs for it
    assert resolve_hardware_defaults(Settings(device="cpu", dtype="float32")).dtype == "float32"


def test_the_probe_fault_forces_the_probe_on_any_cpu(monkeypatch) -> None:
    monkeypatch.setattr(config, "has_native_bf16", lambda: False)
    faulty = Settings(device="cpu", test_fault="bf16_probe_sigill")
    assert resolve_hardware_defaults(faulty).dtype is None


def test_gpu_defaults_keep_auto_dtype_and_per_token_quiet_star() -> None:
    """On a GPU the continuation engine would turn asynchronous scheduling off for every
    method; until a GPU run measures that trade-off, per-token keeps it (docs/architecture.md)."""
    gpu = resolve_hardware_defaults(Settings(device="cuda"))
    assert gpu.dtype == "auto" and gpu.quiet_star_engine == "per_token"
    chosen = resolve_hardware_defaults(Settings(device="cuda", quiet_star_engine="continuation"))
    assert chosen.quiet_star_engine == "continuation"


@pytest.fixture(autouse=True)
def _no_omp_bind_leak(monkeypatch) -> None:
    """build_engine_args exports VLLM_CPU_OMP_THREADS_BIND; undo it after each test so
    the gateways other tests start see the machine's environment."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)


@pytest.mark.parametrize(
    ("cores", "env", "expected"),
    [({0, 1}, None, "all"), (set(range(4)), None, "all"), (set(range(16)), None, "auto"),
     ({0, 1}, "0", "auto")],
)  # fmt: skip
def test_small_machines_bind_the_model_to_every_core_unless_the_operator_chose(
    monkeypatch, cores, env, expected
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    if env is not None:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", env)
    assert default_cpu_threads_bind() == expected
    settings = resolve_hardware_defaults(Settings(device="cpu"))
    assert settings.cpu_threads_bind == expected
    assert resolve_hardware_defaults(Settings(device="cuda")).cpu_threads_bind is None


@pytest.mark.parametrize(
    ("setting", "exported"), [("all", "0,1,3"), ("auto", None), ("2-5", "2-5")]
)
def test_the_engine_environment_carries_the_cpu_thread_binding(
    monkeypatch, setting, exported
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 0, 1})
    settings = resolve_hardware_defaults(Settings(device="cpu", cpu_threads_bind=setting))
    env = engine_env(settings)
    assert env.get("VLLM_CPU_OMP_THREADS_BIND") == exported
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(settings.kv_cache_gib)
    assert "VLLM_USE_V2_MODEL_RUNNER" not in env


def test_explicit_settings_win_over_hardware_defaults() -> None:
    settings = resolve_hardware_defaults(Settings(device="cpu", block_size=64, dtype="bfloat16"))
    assert settings.block_size == 64 and settings.dtype == "bfloat16"


def test_cli_flags_and_env_both_configure(monkeypatch) -> None:
    monkeypatch.setenv("THINKSCALE_MAX_N", "3")
    settings = Settings(_cli_parse_args=["--port", "9001", "--rebase-scheduler", "direct"])
    assert (settings.port, settings.max_n, settings.rebase_scheduler) == (9001, 3, "direct")


def test_engine_args_register_quiet_star_and_pin_v1_runner_on_gpu(
    monkeypatch, tiny_model_dir
) -> None:
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    gpu = resolve_hardware_defaults(Settings(device="cuda"))
    args = build_engine_args(gpu, str(tiny_model_dir))
    assert args.logits_processors == ["kernels.quiet_star.processor:QuietStarLogitsProcessor"]
    assert engine_env(gpu) == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert args.enable_prefix_caching and args.block_size == 16


def test_model_runner_v2_loads_the_v2_processor_on_gpu_and_is_refused_on_cpu(
    monkeypatch, tiny_model_dir
) -> None:
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    gpu = resolve_hardware_defaults(Settings(device="cuda", model_runner="v2"))
    args = build_engine_args(gpu, str(tiny_model_dir))
    assert args.logits_processors == ["kernels.quiet_star.processor_v2:QuietStarLogitsProcessorV2"]
    assert engine_env(gpu) == {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    with pytest.raises(ValueError, match=r"model_runner: .* only with Triton"):
        resolve_hardware_defaults(Settings(device="cpu", model_runner="v2"))


def test_a_setting_the_machine_cannot_honour_exits_with_its_message(capsys) -> None:
    from server.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", "--model-runner", "v2"])
    assert exit_info.value.code == 2
    assert "model_runner" in capsys.readouterr().err


def test_the_engine_bounds_the_cpu_kv_cache(tiny_model_dir) -> None:
    cpu = resolve_hardware_defaults(Settings(device="cpu", kv_cache_gib=3))
    args = build_engine_args(cpu, str(tiny_model_dir))
    assert engine_env(cpu)["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert args.block_size == 32


def test_engine_runs_vllm_priority_scheduling_only_for_the_priority_rebase_scheduler(
    monkeypatch, tiny_model_dir
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    for scheduler, policy in (("priority", "priority"), ("fair", "fcfs"), ("direct", "fcfs")):
        settings = resolve_hardware_defaults(Settings(device="cpu", rebase_scheduler=scheduler))
        assert build_engine_args(settings, str(tiny_model_dir)).scheduling_policy == policy


@pytest.mark.parametrize("engine", ["continuation", "per_token"])
def test_engine_args_install_the_quiet_star_scheduler_for_continuation(
    engine, tiny_model_dir
) -> None:
    settings = resolve_hardware_defaults(Settings(device="cpu", quiet_star_engine=engine))
    args = build_engine_args(settings, str(tiny_model_dir))
    if engine == "continuation":
        assert args.scheduler_cls == "kernels.quiet_star.scheduler.QuietStarScheduler"
        assert args.async_scheduling is False  # the rollback needs synchronous scheduling
    else:
        assert args.scheduler_cls is None


class CharTokenizer:
    """One token per byte, decoded as UTF-8 with replacement, like a byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def feed(text: IncrementalText, data: bytes) -> str:
    return "".join(text.add([b]).text for b in data)


def test_incremental_text_never_splits_a_character() -> None:
    text = IncrementalText(CharTokenizer())
    pieces = [text.add([b]).text for b in "é€".encode()]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + text.flush() == "é€"


def test_incremental_text_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    text = IncrementalText(CharTokenizer(), stops=["END"])
    sent = feed(text, b"abcEN")
    assert sent == "abc"  # "EN" might become "END": held back
    delta = text.add(list(b"D tail"))
    assert delta.stopped_by == "END" and delta.text == ""
    assert text.flush() == ""


def test_incremental_text_releases_held_text_when_no_stop_comes() -> None:
    text = IncrementalText(CharTokenizer(), stops=["END"])
    sent = feed(text, b"abcENx")
    assert sent + text.flush() == "abcENx"


def test_merge_streams_interleaves_and_cancels_producers() -> None:
    async def main() -> tuple[list[int], list[str]]:
        events: list[str] = []

        async def producer(start: int):
            try:
                for i in range(start, start + 100, 2):
                    await asyncio.sleep(0)
                    yield i
            finally:
                events.append(f"closed {start}")

        got = []
        merged = merge_streams([producer(0), producer(1)])
        async for item in merged:
            got.append(item)
            if len(got) == 6:
                break
        await merged.aclose()
        return got, events

    got, events = asyncio.run(main())
    assert {g % 2 for g in got} == {0, 1}  # both producers contributed
    assert sorted(events) == ["closed 0", "closed 1"]
