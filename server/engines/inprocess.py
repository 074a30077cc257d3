"""The policy engine: vLLM's AsyncLLM in the gateway process, plus per-call cost accounting.

Why a wrapper: methods should not know how vLLM is configured, nor remember to abort a
request whose client went away, nor how to count what a call computed. `Engine.generate`
streams one sequence and, however it ends (finished, cancelled, failed), charges the
call to the request's :class:`~server.core.usage.UsageMeter`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from vllm import AsyncEngineArgs, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from kernels.quiet_star import PROCESSOR_FQCN as QUIET_STAR_PROCESSOR
from kernels.quiet_star import PROCESSOR_V2_FQCN as QUIET_STAR_PROCESSOR_V2
from kernels.quiet_star.checkpoint_setup import model_setup, quiet_star_overrides
from kernels.quiet_star.scheduler import SCHEDULER_FQCN as QUIET_STAR_SCHEDULER
from server.core.config import Settings
from server.core.flops import FlopsModel
from server.core.request_ids import engine_request_id
from server.core.usage import Component, UsageMeter
from server.engines.vllm_startup import engine_environment, start_async_llm

logger = logging.getLogger(__name__)


def resolve_model_path(settings: Settings) -> str:
    """The model to serve: the operator's choice, else the embedded SmolLM2 (converted once)."""
    if settings.model:
        return settings.model
    from server.engines.embedded_model import ensure_served_embedded_model

    return str(ensure_served_embedded_model(settings.cache_dir))


def build_engine_args(settings: Settings, model_path: str) -> AsyncEngineArgs:
    """Translate our settings into vLLM's; hardware defaults must be resolved already. The
    environment its engine core needs is `engine_env(settings)`."""
    continuation = settings.quiet_star_engine == "continuation"
    return AsyncEngineArgs(
        model=model_path,
        tokenizer=model_setup(settings, model_path).tokenizer,
        hf_overrides=quiet_star_overrides(settings, model_path) or {},
        logprobs_mode=settings.logprobs_mode,
        served_model_name=[served_name(settings, model_path)],
        dtype=settings.dtype or "auto",
        block_size=settings.block_size,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        enforce_eager=bool(settings.enforce_eager),
        enable_prefix_caching=True,
        max_logprobs=settings.max_logprobs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        trust_remote_code=settings.trust_remote_code,
        seed=settings.seed,
        disable_log_stats=False,  # keeps vLLM's own vllm:* Prometheus series
        logits_processors=[quiet_star_processor(settings)],
        # The REBASE priority scheduler passes `priority=` per engine request (lower first);
        # vLLM honours it, and preempts the lowest priority first, only under this policy.
        scheduling_policy="priority" if settings.rebase_scheduler == "priority" else "fcfs",
        # Quiet-STaR continuation rolls each token's thought back (kernels/quiet_star/
        # scheduler.py); its rollback needs synchronous scheduling (the CPU default anyway).
        **(
            {"scheduler_cls": QUIET_STAR_SCHEDULER, "async_scheduling": False}
            if continuation
            else {}
        ),
    )


def engine_env(settings: Settings) -> dict[str, str]:
    """The engine core's environment (server/engines/vllm_startup.py): on GPU, the runner the
    operator chose, whose processor `quiet_star_processor` loads."""
    cpu = settings.device == "cpu"
    return engine_environment(
        cpu=cpu,
        kv_cache_gib=settings.kv_cache_gib,
        threads_bind=settings.cpu_threads_bind,
        model_runner=None if cpu else settings.model_runner,
    )


def quiet_star_processor(settings: Settings) -> str:
    """The Quiet-STaR logits processor for the model runner the engine will use (V2 only on a
    GPU that asked for it: resolve_hardware_defaults refuses V2 on CPU)."""
    if settings.device != "cpu" and settings.model_runner == "v2":
        return QUIET_STAR_PROCESSOR_V2
    return QUIET_STAR_PROCESSOR


def served_name(settings: Settings, model_path: str) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    return Path(model_path).name if Path(model_path).exists() else model_path


@dataclass
class Engine:
    """The in-process policy engine (the default implementation of
    `server.engines.base.PolicyEngine`; the remote one is server/engines/remote.py)."""

    llm: AsyncLLM
    model_name: str
    model_path: str
    max_model_len: int
    flops: FlopsModel
    # quiet_star: one engine request per sequence (the continuation scheduler) or per token
    quiet_star_continuation: bool = True
    prompt_logprobs: bool = True  # vLLM's RequestOutput.prompt_logprobs

    @classmethod
    def start(cls, settings: Settings) -> Engine:
        model_path = resolve_model_path(settings)
        args = build_engine_args(settings, model_path)
        logger.info("starting vLLM engine for %s", model_path)
        llm = start_async_llm(args, engine_env(settings))
        return cls(
            llm=llm,
            model_name=served_name(settings, model_path),
            model_path=model_path,
            max_model_len=llm.model_config.max_model_len,
            flops=FlopsModel.from_hf_config(llm.model_config.hf_config),
            quiet_star_continuation=settings.quiet_star_engine == "continuation",
        )

    def shutdown(self) -> None:
        self.llm.shutdown()

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def hf_config(self):
        return self.llm.model_config.hf_config

    @property
    def max_logprobs(self) -> int:
        return int(self.llm.model_config.max_logprobs)

    @property
    def logprobs_mode(self) -> str:
        return str(self.llm.model_config.logprobs_mode)

    @property
    def errored(self) -> bool:
        return bool(self.llm.errored)

    def kv_layout(self) -> tuple[int, int] | None:
        # Fixed once the engine has started: vLLM's front end holds them in `cache_config`.
        config = self.llm.vllm_config.cache_config
        blocks, size = config.num_gpu_blocks, config.block_size
        if not isinstance(blocks, int) or not isinstance(size, int) or blocks < 1 or size < 1:
            return None
        return blocks, size

    async def check_health(self) -> None:
        await self.llm.check_health()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        meter: UsageMeter,
        *,
        component: Component = "policy",
        request_id: str | None = None,
        choice_id: str | None = None,  # one engine: nothing to route
        priority: int = 0,
        rollback_steps: int | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the outputs of one single-sequence engine request, then charge its cost.

        However the call ends (finished, the consumer stopped early or closed the generator,
        cancellation by a disconnect, timeout or shutdown, an error), it is charged before this
        generator is done: a call cut short is aborted first, and the engine's last output
        (which vLLM makes at the abort, cumulative under FINAL_ONLY, the deltas not yet read
        under DELTA) says how many tokens it had produced. So the charge counts what the
        engine's own counters counted (docs/architecture.md, "Accounting identity").
        """
        if params.n != 1:
            raise ValueError("Engine.generate runs one sequence; fan out n in the method")
        # Every engine request id starts with its HTTP request's id (server/core/request_ids.py).
        request_id = request_id or engine_request_id()
        logger.debug("engine request %s: %d prompt tokens", request_id, len(prompt_token_ids))
        prompt = TokensPrompt(prompt_token_ids=prompt_token_ids)
        tally = CallTally(delta=params.output_kind == RequestOutputKind.DELTA)
        # vLLM's own `generate` aborts a request cut short but drops what the engine said at
        # the abort; reading the request's queue here keeps it.
        queue = await self.llm.add_request(request_id, prompt, params, priority=priority)
        try:
            while not tally.finished:
                output = queue.get_nowait() or await queue.get()
                tally.add(output)
                yield output
        finally:
            try:
                if not tally.finished:
                    await _abort(self.llm, queue, tally)
            finally:
                queue.close()
                meter.record_generation(
                    prompt_tokens=len(prompt_token_ids),
                    cached_tokens=tally.cached_tokens,
                    generated_tokens=tally.generated_tokens,
                    component=component,
                    rollback_steps=rollback_steps,  # Quiet-STaR continuation: positions roll back
                    # prompt logprobs run the LM head at every prompt position
                    prompt_logits="last" if params.prompt_logprobs is None else "all",
                    reported=tally.reported,
                )

    async def num_unfinished_requests(self) -> int:
        return self.llm.get_num_unfinished_requests()


async def _abort(llm: AsyncLLM, queue, tally: CallTally) -> None:
    """Abort a request cut short and add what the engine said at the abort to `tally`.

    vLLM's output side of the abort runs before its first await: the queue holds the final
    output even when this task is cancelled again while the engine core is told."""
    try:
        await llm.abort(queue.request_id, internal=True)
    except Exception:  # a dead engine: the lifecycle reports it; the charge must still happen
        logger.warning("aborting engine request %s failed", queue.request_id, exc_info=True)
    finally:
        try:
            rest = queue.get_nowait()
        except Exception:  # an engine error stored for this request: nothing more to count
            rest = None
        if isinstance(rest, RequestOutput):
            tally.add(rest)


@dataclass
class CallTally:
    """What one engine call produced, from the outputs vLLM handed over.

    `reported`: vLLM's output processor saw the call (it then counted the call's uncached prompt
    and every token in `vllm:iteration_tokens_total`); False for a call aborted before its first
    output, which vLLM's counters never see."""

    delta: bool  # outputs are deltas (else cumulative, or one final output)
    generated_tokens: int = 0
    cached_tokens: int = 0
    reported: bool = False
    finished: bool = False

    def add(self, output: RequestOutput) -> None:
        produced = len(output.outputs[0].token_ids) if output.outputs else 0
        self.generated_tokens = self.generated_tokens + produced if self.delta else produced
        self.cached_tokens = output.num_cached_tokens or 0
        reason = output.outputs[0].finish_reason if output.outputs else None
        # The abort's own output ("abort", no token) is made by the frontend, not the engine.
        self.reported = self.reported or produced > 0 or reason not in (None, "abort")
        self.finished = self.finished or output.finished
