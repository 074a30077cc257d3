"""Gateway settings: one pydantic-settings model read from THINKSCALE_* variables and CLI flags.

Why one model: the engine, the API limits and the method defaults are all tuned together for
one box (a 2-core CPU or a GPU), and the operator should see every knob in one `--help`.
Values left at `None` are resolved for the hardware by :func:`resolve_hardware_defaults`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "thinkscale"


class Settings(BaseSettings):
    """Everything the gateway process needs to know; see README for examples."""

    model_config = SettingsConfigDict(
        env_prefix="THINKSCALE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m server",
        extra="ignore",
    )

    # --- serving -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the gateway.")
    api_key: str | None = Field(
        None, description="If set, requests need 'Authorization: Bearer KEY'."
    )
    allow_insecure_no_auth: bool = Field(
        False,
        description="Start without an API key even when listening beyond loopback (a model "
        "open to the network); without this flag such a start is refused.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests may run to completion before "
        "they are cut (streams end with an error event and [DONE]).",
    )
    api_keys: str | None = Field(
        None, description="More accepted keys, comma-separated (with --api-key, all are valid)."
    )
    api_key_file: Path | None = Field(
        None, description="File of accepted keys, one per line ('#' starts a comment)."
    )
    protect_metrics: bool = Field(
        False, description="Require an API key on /metrics too (default: open, like /health)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body; bigger ones get 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per line, with the request id."
    )
    log_prompts: bool = Field(
        False, description="Log each request's prompts (debug aid; off: prompts may be private)."
    )

    # --- model ---------------------------------------------------------------------------
    model: str | None = Field(
        None,
        description="Hugging Face id or local folder; unset = the embedded SmolLM2-135M-Instruct.",
    )
    served_model_name: str | None = Field(None, description="Name clients use; default: model's.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (Hugging Face id or folder) for the engine and the gateway; "
        "default: the model's. A model that ships only added_tokens.json (the Quiet-STaR "
        "checkpoint) needs it: its added tokens are merged onto this tokenizer once, in the cache.",
    )
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="Where the embedded model is converted.")
    trust_remote_code: bool = False

    # --- engine --------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Which vLLM build to expect."
    )
    dtype: str | None = Field(
        None,
        description="Model dtype. Default: on GPU vLLM's 'auto'; on CPU bfloat16 only where the "
        "CPU has native bf16 (AVX-512 BF16 / AMX) and a probe in a subprocess ran a bf16 "
        "forward and decode with the served shapes and KV size, else float32 "
        "(docs/architecture.md, 'Hardware defaults'). A value here always wins.",
    )
    block_size: int | None = Field(
        None, description="KV block size; 32 on CPU (the smallest it takes) so prefixes hit."
    )
    kv_cache_gib: int = Field(4, ge=1, description="KV cache size on CPU (GiB, whole).")
    cpu_threads_bind: str | None = Field(
        None,
        description="CPU cores the engine's model threads use (vLLM's VLLM_CPU_OMP_THREADS_BIND): "
        "'auto' = vLLM's choice (all cores but one, kept for its scheduler process); 'all' = "
        "every core this process may use; or a list such as '0-7'. Default: 'all' on machines "
        "with 4 cores or fewer (where the kept core is a large share: docs/benchmarks.md), "
        "else 'auto'; an operator's VLLM_CPU_OMP_THREADS_BIND is left alone.",
    )
    model_runner: Literal["v1", "v2"] = Field(
        "v1",
        description="vLLM's model runner on GPU, with the Quiet-STaR logits processor written "
        "for it: 'v1' pins the V1 runner (the one vLLM's CPU backend always runs, where every "
        "test runs); 'v2' = Model Runner V2, vLLM's GPU default (docs/quiet_star.md, 'The GPU "
        "path'). Not on CPU: vLLM refuses V2 without a Triton backend ('Model Runner V2 requires "
        "Triton').",
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = Field(
        None, ge=64, description="Longest prompt + completion (tokens); default: the model's own."
    )
    max_num_seqs: int = Field(64, ge=1, description="Most sequences the engine batches at once.")
    enforce_eager: bool | None = Field(None, description="Skip graph capture; default True on CPU.")
    max_logprobs: int = Field(20, ge=0, le=100)
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = Field(
        "raw_logprobs",
        description="vLLM's logprobs mode. 'processed_logprobs' reports the distribution "
        "actually sampled (after temperature/top-p and logits processors); quiet_star returns "
        "logprobs of its talk tokens only in that mode.",
    )
    quiet_star_thought_embeddings: Literal["eval", "trained", "vocab"] = Field(
        "eval",
        description="How a Quiet-STaR checkpoint embeds its thought tokens: 'eval' = "
        "embed('---') as the released eval script does, 'trained' = the checkpoint's "
        "start/end_embedding, 'vocab' = its embed_tokens rows (docs/quiet_star.md).",
    )
    quiet_star_engine: Literal["continuation", "per_token"] | None = Field(
        None,
        description="How quiet_star decodes: 'continuation' = one engine request per sequence, "
        "each token's thought rolled back by our scheduler (s + t + e + 1 positions per token, "
        "s and e the delimiters' token counts; turns "
        "vLLM's asynchronous scheduling off for every method); 'per_token' = one engine "
        "request per output token. Default: 'continuation' on CPU (synchronous there anyway), "
        "'per_token' on GPU, where asynchronous scheduling is kept until a GPU run measures "
        "the trade-off (docs/architecture.md, 'Quiet-STaR engines and asynchronous "
        "scheduling').",
    )
    seed: int = 0
    test_fault: Literal["none", "engine_sigill_at_warmup", "bf16_probe_sigill"] = Field(
        "none",
        description="Test only: inject a start-up failure. 'engine_sigill_at_warmup' kills the "
        "engine core with SIGILL during the warm-up; 'bf16_probe_sigill' makes the CPU bf16 "
        "probe die with SIGILL (and run even where the CPU has no native bf16).",
    )

    # --- remote engine (docs/scaling.md) ------------------------------------------------
    engine_url: str | None = Field(
        None,
        description="Base URL of a router in front of `vllm serve` replicas (or of one "
        "replica); unset = the in-process engine.",
    )
    engine_replicas: int = Field(
        1,
        ge=1,
        description="Replicas behind --engine-url: the in-flight bounds "
        "(max_pending_requests, rebase_max_in_flight) are per replica and scale with it.",
    )
    engine_routing_header: str = Field(
        "x-session-id",
        description="Header carrying the routing key (one per tree or sequence) that the "
        "router hashes to pick a replica (vllm-router's consistent_hash reads x-session-id).",
    )
    engine_api_key: str | None = Field(None, description="Bearer key the replicas/router need.")
    engine_priority_scheduling: bool = Field(
        False,
        description="The replicas run `vllm serve --scheduling-policy priority`: forward each "
        "call's vLLM priority (the 'priority' REBASE scheduler's age order). Off by default: "
        "a replica without that policy refuses any non-zero priority.",
    )
    engine_retries: int = Field(
        3, ge=0, description="Times an engine call is sent again after its replica failed."
    )
    engine_retry_backoff_s: float = Field(0.5, ge=0, description="Backoff step between tries.")
    engine_connect_timeout_s: float = Field(5.0, gt=0)
    engine_read_timeout_s: float = Field(
        300.0, gt=0, description="Longest silence of a replica's stream before it counts as dead."
    )
    engine_start_timeout_s: float = Field(
        600.0, gt=0, description="How long to wait for the router to list a model at start."
    )
    engine_replica_urls: list[str] | None = Field(
        None,
        description="The replicas behind --engine-url, probed at start and whenever one comes "
        "back (a tiny Quiet-STaR call each: a replica missing a flag is refused, naming it). "
        "Unset: the router's worker list (vllm-router's /list_workers).",
    )
    engine_probe_interval_s: float = Field(
        2.0,
        ge=0,
        description="How often the gateway checks its replicas' /health to re-probe one that "
        "came back (0: probe at start only).",
    )

    # --- methods -----------------------------------------------------------------------
    reward_model: Literal["arithmetic", "policy_judge", "vllm_prm"] = Field(
        "arithmetic", description="Default process reward model of REBASE."
    )
    prm_model: str | None = Field(None, description="HF id/folder of a PRM for 'vllm_prm'.")
    prm_style: Literal["math_shepherd", "qwen_prm"] = "math_shepherd"
    rebase_scheduler: Literal["priority", "fair", "direct"] = Field(
        "fair",
        description="'priority': one bounded scheduler for all trees, older requests first "
        "(fairness as a bound), admission by KV blocks, children scored as soon as their step "
        "ends, vLLM priority scheduling; 'fair': one bounded scheduler, fewest-running request "
        "first; 'direct': each tree submits its own engine calls (for comparison).",
    )
    rebase_max_in_flight: int = Field(
        64, ge=1, description="Engine jobs (sequences, scoring calls) REBASE keeps in flight."
    )
    rebase_prm_max_in_flight: int = Field(
        16,
        ge=1,
        description="PRM-engine scoring calls in flight ('priority' scheduler: the PRM has its "
        "own bound instead of policy slots).",
    )
    rebase_min_share: int = Field(
        1,
        ge=0,
        description="'priority' scheduler: jobs every request with queued work keeps running "
        "before the age order applies (the fairness bound); 0: pure age order, oldest first.",
    )
    rebase_kv_watermark: float = Field(
        0.95,
        gt=0,
        le=1,
        description="'priority' scheduler: admit expansions while the KV blocks they need fit "
        "under this fraction of the engine's KV cache.",
    )

    # --- API limits (bounded resources) ----------------------------------------------------
    max_pending_requests: int = Field(
        256,
        ge=1,
        description="Requests admitted at once; more get 429 instead of queueing forever.",
    )
    max_n: int = Field(16, ge=1, le=128, description="Largest `n` a request may ask for.")
    max_prompts_per_request: int = Field(32, ge=1, description="Largest list of prompts.")
    max_request_sequences: int = Field(
        1024,
        ge=1,
        description="Engine sequences one request may hold at once (prompts x n, x rebase.width "
        "for tree search); more get 400, so one request cannot take the whole engine.",
    )
    max_request_tokens: int = Field(
        4_000_000,
        ge=1,
        description="Tokens one request may generate at most (sequences x max_tokens, Quiet-STaR "
        "thoughts included); more get 400.",
    )
    request_timeout_s: float = Field(1800.0, gt=0, description="Abort a request after this long.")


def has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX: only there is bfloat16 faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_candidate(settings: Settings) -> bool:
    """Whether a CPU start should probe bfloat16 (the fault injection forces the probe so the
    fallback is testable on every CPU)."""
    return has_native_bf16() or settings.test_fault == "bf16_probe_sigill"


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide dtype and kernels, for logs and benchmark provenance."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in RECORDED_CPU_FLAGS}


RECORDED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def detect_device() -> Literal["cpu", "cuda"]:
    """Which engine build is installed: the vllm-cpu package reports the CPU platform."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


def resolve_hardware_defaults(settings: Settings) -> Settings:
    """Fill the `None` engine knobs with values measured to work on this kind of device."""
    device = detect_device() if settings.device == "auto" else settings.device
    on_cpu = device == "cpu"
    updates: dict[str, object] = {"device": device}
    if settings.dtype is None and not (on_cpu and bf16_candidate(settings)):
        # CPUs that may run bf16 keep None here: server/app/dtype_probe.py settles it before the
        # engine starts (a subprocess probe takes as long as an engine start).
        updates["dtype"] = "float32" if on_cpu else "auto"
    if settings.quiet_star_engine is None:
        updates["quiet_star_engine"] = "continuation" if on_cpu else "per_token"
    if settings.block_size is None:
        updates["block_size"] = 32 if on_cpu else 16
    if settings.enforce_eager is None:
        updates["enforce_eager"] = on_cpu
    if settings.cpu_threads_bind is None and on_cpu:
        updates["cpu_threads_bind"] = default_cpu_threads_bind()
    if on_cpu and settings.model_runner == "v2":
        raise ValueError("model_runner: vLLM runs Model Runner V2 only with Triton (GPU); use 'v1'")
    return settings.model_copy(update=updates)


SMALL_MACHINE_CORES = 4


def default_cpu_threads_bind() -> str:
    """'all' on a small machine, else vLLM's 'auto'.

    Why: vLLM's CPU backend keeps one core free for its scheduler process, which busy-waits
    on the model worker. On a 2-core machine that halves the cores the model runs on; measured
    there, binding the worker to both cores makes a decode step faster (docs/benchmarks.md,
    "CPU threads"). An operator's own VLLM_CPU_OMP_THREADS_BIND wins."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return "auto"
    return "all" if len(os.sched_getaffinity(0)) <= SMALL_MACHINE_CORES else "auto"


def omp_threads_bind_value(setting: str) -> str | None:
    """What VLLM_CPU_OMP_THREADS_BIND is set to for `cpu_threads_bind` (None: leave it)."""
    if setting == "auto":
        return None
    if setting == "all":
        return ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return setting
