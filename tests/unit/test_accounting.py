"""Every engine call is charged before its request's usage is read, however it ends.

Fakes stand in for vLLM's AsyncLLM (with vLLM's real per-request output queue) and for the
policy engine; the end-to-end identity against vLLM's own counter is
tests/e2e/test_accounting_identity.py.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from types import SimpleNamespace

import pytest
from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.output_processor import RequestOutputCollector

from server.core.config import Settings
from server.core.flops import FlopsModel
from server.core.requests import MethodInput, SamplingSpec
from server.core.usage import UsageMeter
from server.engines.inprocess import Engine
from server.methods.base import MethodContext
from server.methods.baseline import Baseline
from server.methods.quiet_star import QuietStar
from server.methods.resources import Resources
from server.methods.streams import gather_cancelling, merge_streams
from server.quiet_star.params import QuietStarParams
from tests.tiny_model import build_tokenizer

FLOPS = FlopsModel(2, 64, 64, 64, 128, 512, True)
PROMPT = [5, 6, 7, 8]


def output(tokens: list[int], *, finished: bool = False, reason: str | None = None, cached=0):
    completion = CompletionOutput(
        index=0, text="", token_ids=tokens, cumulative_logprob=None, logprobs=None,
        finish_reason=reason,
    )  # fmt: skip
    out = RequestOutput("r", None, PROMPT, None, [completion], finished)
    out.num_cached_tokens = cached
    return out


class FakeLLM:
    """vLLM's AsyncLLM as Engine.generate uses it: `add_request` hands out vLLM's own
    per-request queue, fed by `emit` (the output processor); `abort` puts the frontend's final
    output, as vLLM's OutputProcessor.abort_requests does (cumulative under FINAL_ONLY)."""

    def __init__(self) -> None:
        self.queue: RequestOutputCollector | None = None
        self.kind = RequestOutputKind.DELTA
        self.emitted: list[int] = []  # every token the "engine" produced
        self.aborted = False
        self.reported = False

    async def add_request(self, request_id, prompt, params, priority=0):
        self.kind = params.output_kind
        self.queue = RequestOutputCollector(params.output_kind, request_id)
        return self.queue

    def emit(self, tokens: list[int], *, reason: str | None = None) -> None:
        self.emitted += tokens
        self.reported = True
        finished = reason is not None
        if self.kind == RequestOutputKind.FINAL_ONLY and not finished:
            return  # vLLM makes no output until the end
        shown = tokens if self.kind == RequestOutputKind.DELTA else list(self.emitted)
        self.queue.put(output(shown, finished=finished, reason=reason, cached=2))

    async def abort(self, request_id, internal=False):
        self.aborted = True
        shown = [] if self.kind == RequestOutputKind.DELTA else list(self.emitted)
        self.queue.put(output(shown, finished=True, reason="abort", cached=2 * self.reported))
        await asyncio.sleep(0)  # telling the engine core


def engine(llm: FakeLLM) -> Engine:
    return Engine(llm=llm, model_name="m", model_path="m", max_model_len=64, flops=FLOPS)  # type: ignore[arg-type]


def params(kind: RequestOutputKind) -> SamplingParams:
    return SamplingParams(max_tokens=16, output_kind=kind)


async def test_a_call_that_finishes_is_charged_once_without_abort() -> None:
    llm, meter = FakeLLM(), UsageMeter(FLOPS)
    calls = engine(llm).generate(PROMPT, params(RequestOutputKind.DELTA), meter)
    async with aclosing(calls) as outputs:
        first = asyncio.ensure_future(outputs.__anext__())
        await asyncio.sleep(0)
        llm.emit([1, 2])
        await first
        llm.emit([3], reason="stop")
        assert [o.outputs[0].token_ids async for o in outputs] == [[3]]
    cost = meter.component("policy")
    assert not llm.aborted
    assert (cost.engine_calls, cost.generated_tokens, cost.cached_tokens) == (1, 3, 2)
    assert cost.forward_tokens == len(PROMPT) - 2 + 3 - 1
    assert (cost.emitting_calls, cost.unreported_calls) == (1, 0)
    # what vLLM's iteration-token counter counts: uncached prompt + every emitted token
    assert cost.engine_counted_tokens == len(PROMPT) - 2 + 3


@pytest.mark.parametrize("kind", [RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY])
async def test_a_consumer_that_stops_early_gets_the_call_aborted_and_charged_in_full(kind) -> None:
    """The engine produced 5 tokens; the consumer read fewer (DELTA) or none (FINAL_ONLY):
    the charge counts all 5, as vLLM's counters do, and it is there when the generator closes."""
    llm, meter = FakeLLM(), UsageMeter(FLOPS)
    calls = engine(llm).generate(PROMPT, params(kind), meter)
    async with aclosing(calls) as outputs:
        pending = asyncio.ensure_future(outputs.__anext__())
        await asyncio.sleep(0)
        llm.emit([1, 2])
        if kind == RequestOutputKind.DELTA:
            await pending
            llm.emit([3, 4, 5])  # produced, never read
        else:
            llm.emit([3, 4, 5])
            pending.cancel()  # a FINAL_ONLY caller cancelled mid-way
            with pytest.raises(asyncio.CancelledError):
                await pending
    assert llm.aborted
    cost = meter.component("policy")
    assert (cost.engine_calls, cost.generated_tokens, cost.emitting_calls) == (1, 5, 1)
    assert cost.forward_tokens == len(PROMPT) - 2 + 5 - 1


async def test_a_call_cancelled_before_its_first_output_is_charged_its_prompt_as_unreported():
    llm, meter = FakeLLM(), UsageMeter(FLOPS)

    async def consume() -> None:
        async for _ in engine(llm).generate(PROMPT, params(RequestOutputKind.DELTA), meter):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cost = meter.component("policy")
    assert llm.aborted
    assert (cost.engine_calls, cost.generated_tokens, cost.forward_tokens) == (1, 0, len(PROMPT))
    assert (cost.unreported_calls, cost.unreported_tokens, cost.emitting_calls) == (1, 4, 0)
    assert cost.engine_counted_tokens == 0  # vLLM never saw it


# ---- the method path: nested generators closed at every level --------------------------------
class FakePolicyEngine:
    """A policy engine whose calls charge the meter in `finally`, as both real engines do;
    `script` gives each call's DELTA outputs (lists of token ids), the last one finishing."""

    model_name = model_path = "fake"
    max_model_len = 1024
    max_logprobs = 20
    quiet_star_continuation = True

    def __init__(self, script) -> None:
        self.tokenizer = build_tokenizer()
        self.eos_token_id = self.tokenizer.eos_token_id
        self.hf_config = SimpleNamespace(architectures=["LlamaForCausalLM"], vocab_size=512)
        self.flops = FLOPS
        self.script = script
        self.open_calls = 0

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def generate(self, prompt_token_ids, params, meter, **kwargs):
        self.open_calls += 1
        produced = 0
        try:
            chunks = self.script(params)
            for i, tokens in enumerate(chunks):
                await asyncio.sleep(0)
                produced += len(tokens)
                last = i == len(chunks) - 1
                completion = SimpleNamespace(
                    token_ids=tokens, text=self.decode(tokens), logprobs=None,
                    finish_reason="stop" if last else None, stop_reason=None,
                )  # fmt: skip
                yield SimpleNamespace(outputs=[completion], finished=last, prompt_logprobs=None)
        finally:
            self.open_calls -= 1
            meter.record_generation(
                prompt_tokens=len(prompt_token_ids), cached_tokens=0, generated_tokens=produced
            )


def context(engine: FakePolicyEngine) -> MethodContext:
    settings = Settings(device="cpu")
    return MethodContext(
        engine=engine,
        meter=UsageMeter(FLOPS),
        settings=settings,
        http_request_id="cmpl-r",
        prompt_id="cmpl-r-p0",
        resources=Resources.build(settings, engine),
    )  # type: ignore[arg-type]


async def run_to_end(method, ctx: MethodContext, inp: MethodInput) -> list:
    """What the route does: read every delta, then (with no await in between) the usage."""
    async with aclosing(merge_streams([method.run(ctx, inp)])) as deltas:
        return [d async for d in deltas]


def quiet_star_input(**sampling) -> MethodInput:
    params = QuietStarParams(thought_tokens=1, mixing_weight=0.5)
    spec = SamplingSpec(max_tokens=sampling.pop("max_tokens", 8), **sampling)
    return MethodInput([5, 6, 7], "x", 1, spec, {"quiet_star": params})


def rounds(*talk: int, steps: int = 4) -> list[list[int]]:
    """Quiet-STaR continuation outputs: per talk token, start, one thought, end, talk."""
    return [[1, 2, 3, t] for t in talk]


async def test_quiet_star_ending_on_eos_is_charged_before_the_usage_is_read() -> None:
    fake = FakePolicyEngine(lambda params: [])
    eos = fake.eos_token_id
    fake.script = lambda params: rounds(40, 41, eos)  # the engine stops itself at EOS
    ctx = context(fake)
    deltas = await run_to_end(QuietStar(), ctx, quiet_star_input())
    assert deltas[-1].finish_reason == "stop"
    cost = ctx.meter.component("policy")
    assert fake.open_calls == 0
    assert cost.engine_calls == 1 and cost.generated_tokens == 12
    assert cost.forward_tokens == 3 + 12 - 1


async def test_quiet_star_keeps_the_eos_token_as_vllm_does_and_reports_its_settings() -> None:
    # vLLM's OpenAI server (the baseline method) keeps a stop token in token_ids and
    # completion_tokens and leaves it out of the text only when it is special; quiet_star and
    # quiet_star+rebase follow the same rule (server/quiet_star/decoder.py: until_stop).
    fake = FakePolicyEngine(lambda params: [])
    eos = fake.eos_token_id
    fake.script = lambda params: rounds(40, 41, eos, 42)
    ctx = context(fake)
    deltas = await run_to_end(QuietStar(), ctx, quiet_star_input())
    assert [i for d in deltas for i in d.token_ids] == [40, 41, eos]
    assert "".join(d.text for d in deltas) == fake.decode([40, 41])
    assert deltas[-1].finish_reason == "stop"
    (details,) = ctx.details["quiet_star"]
    assert details["output_tokens"] == 3
    assert details["thought_temperature"] == 1.0


async def test_quiet_star_ending_on_a_stop_string_aborts_and_charges_the_call() -> None:
    fake = FakePolicyEngine(lambda params: [])
    text_ids = fake.encode(" clips clips clips clips clips clips")
    fake.script = lambda params: rounds(*text_ids)
    ctx = context(fake)
    deltas = await run_to_end(QuietStar(), ctx, quiet_star_input(stop=["clips clips"]))
    assert deltas[-1].finish_reason == "stop"
    cost = ctx.meter.component("policy")
    assert fake.open_calls == 0  # closed, not left to the garbage collector
    assert cost.engine_calls == 1 and cost.generated_tokens > 0


async def test_baseline_closed_by_its_consumer_charges_at_once() -> None:
    fake = FakePolicyEngine(lambda params: [[10], [11], [12], [13]])
    ctx = context(fake)
    inp = MethodInput([5, 6], "x", 1, SamplingSpec(max_tokens=4), {})
    async with aclosing(merge_streams([Baseline().run(ctx, inp)])) as deltas:
        async for _ in deltas:
            break  # a client that goes away after the first token
    assert fake.open_calls == 0
    assert ctx.meter.component("policy").generated_tokens == 1


async def test_merge_of_several_streams_closes_every_producer() -> None:
    fake = FakePolicyEngine(lambda params: [[10], [11], [12], [13]])
    ctx = context(fake)
    inp = MethodInput([5, 6], "x", 3, SamplingSpec(max_tokens=4), {})
    async with aclosing(Baseline().run(ctx, inp)) as deltas:
        async for _ in deltas:
            break
    assert fake.open_calls == 0
    assert ctx.meter.component("policy").engine_calls == 3


async def test_gather_cancelling_cancels_and_awaits_the_others_on_a_failure() -> None:
    finished: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            finished.append("slow")

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await gather_cancelling([slow(), failing()])
    assert finished == ["slow"]  # closed (charged) before the error reached the request
