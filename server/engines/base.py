"""The policy-engine interface every method runs on, whichever engine serves it.

Why a Protocol: methods (server/methods/) drive the engine only through `generate` and a few
facts about the model; the in-process AsyncLLM (server/engines/inprocess.py) and the remote
engine that speaks vLLM's OpenAI API to `vllm serve` replicas (server/engines/remote.py) both
satisfy it, so a method never knows which one it runs on (docs/scaling.md).

`generate` takes vLLM's own `SamplingParams` (including `extra_args`, which carry our logits
processor's per-request spec) and yields vLLM `RequestOutput`s honouring the params'
`output_kind`, so per-request arguments of engine-side extensions travel the same way to both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from vllm import SamplingParams
from vllm.outputs import RequestOutput

from server.core.flops import FlopsModel
from server.core.usage import Component, UsageMeter


@runtime_checkable
class PolicyEngine(Protocol):
    """A started policy engine and what methods need to know about its model."""

    model_name: str
    model_path: str
    max_model_len: int
    flops: FlopsModel
    # The engine runs Quiet-STaR continuation (one request per sequence, thoughts rolled back
    # by kernels/quiet_star/scheduler.py); otherwise the decoder makes one request per token.
    quiet_star_continuation: bool
    # The engine returns the prompt's logprobs when `SamplingParams.prompt_logprobs` asks
    # (`echo` with `logprobs`): the in-process AsyncLLM does; vLLM's OpenAI server does not
    # stream them, so the remote engine cannot.
    prompt_logprobs: bool

    @property
    def tokenizer(self) -> Any: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def hf_config(self) -> Any:
        """The served model's Hugging Face config (Quiet-STaR reads its architecture)."""
        ...

    @property
    def max_logprobs(self) -> int: ...

    @property
    def logprobs_mode(self) -> str: ...

    @property
    def errored(self) -> bool:
        """True when the engine can never serve again (the gateway must exit and restart)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        meter: UsageMeter,
        *,
        component: Component = "policy",
        request_id: str | None = None,
        choice_id: str | None = None,
        priority: int = 0,
        rollback_steps: int | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one single-sequence request (`params.n == 1`) and charge its cost to `meter`
        however it ends. `choice_id` groups calls that share a prefix (one tree, one
        sequence) so a replicated engine sends them to one replica's prefix cache; the
        in-process engine ignores it. `priority` is vLLM's (lower runs first) for engines that
        schedule by priority. `rollback_steps` (continuation only) charges each output token's
        rolled-back thought positions. Cancelling the iteration aborts the request."""
        ...

    def kv_layout(self) -> tuple[int, int] | None:
        """(KV blocks, tokens per block) of the started engine, or None when it cannot say (a
        remote engine: each replica has its own cache). REBASE's `priority` scheduler admits
        expansions by KV blocks with it; without it, by count only."""
        ...

    async def check_health(self) -> None:
        """Raise when the engine cannot serve a request right now."""
        ...

    async def num_unfinished_requests(self) -> int: ...

    def shutdown(self) -> None: ...
