"""Request checks shared by `quiet_star` and `quiet_star+rebase`: every OpenAI sampling field
is either honoured by the Quiet-STaR talk token or refused here with a 400 naming it.

Honoured: temperature, top_p, top_k, min_p (the logits processor applies them to the talk
token), seed, n, stop, ignore_eos, max_tokens, min_tokens (no EOS/stop token before it),
logprobs (of the talk token, only when the engine reports processed logprobs). Refused: the
repetition penalties, which vLLM would apply to the engine request's own output, i.e. the
thought, not to the visible text.
"""

from __future__ import annotations

from server.core.errors import APIError
from server.core.requests import MethodInput
from server.engines.base import PolicyEngine
from server.quiet_star.delimiters import resolve_delimiters
from server.quiet_star.params import QuietStarParams
from server.quiet_star.served_model import ServedModel, served_model

_PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}


def check_quiet_star_input(inp: MethodInput, engine: PolicyEngine, method: str) -> None:
    params: QuietStarParams = inp.params["quiet_star"]  # type: ignore[assignment]
    start, end = resolve_delimiters(engine.tokenizer, params.start_token, params.end_token)
    sampling = inp.sampling
    for name, neutral in _PENALTIES.items():
        if getattr(sampling, name) != neutral:
            raise APIError(
                f"{name} is not supported by method '{method}' (vLLM would apply it to the "
                "hidden thought, not to the text)",
                param=name,
            )
    if sampling.logprobs is not None and engine.logprobs_mode != ("processed_logprobs"):
        raise APIError(
            f"logprobs is not supported by method '{method}' unless the server runs with "
            "--logprobs-mode processed_logprobs (the talk token's distribution exists only "
            "after the Quiet-STaR logits processor)",
            param="logprobs",
        )
    if sampling.min_tokens and sampling.stop:
        raise APIError(
            f"min_tokens together with stop is not supported by method '{method}'",
            param="min_tokens",
        )
    model = served_model(engine)
    _check_checkpoint_delimiters(params, model, engine, start, end)
    thought = params.thought_tokens
    thought = model.default_thought_tokens if thought is None else thought
    # Resolved once, here: the work cap (Method.work), `usage` and the decoder read the same
    # thought length and delimiters, hence the same step length.
    resolved = params.resolved(thought, start, end)
    inp.params["quiet_star"] = resolved
    steps = resolved.steps
    bos = 1 if model.bos_token_id is not None and inp.prompt_token_ids[:1] != [
        model.bos_token_id
    ] else 0  # fmt: skip
    needed = bos + len(inp.prompt_token_ids) + steps
    if needed > engine.max_model_len:
        raise APIError(
            f"This model's maximum context length is {engine.max_model_len} tokens; a "
            f"Quiet-STaR step on this prompt ({len(inp.prompt_token_ids) + bos} tokens) needs "
            f"{steps} more positions (thought and talk token). Reduce the prompt or "
            "quiet_star.thought_tokens.",
            param="prompt",
        )


def _check_checkpoint_delimiters(
    params: QuietStarParams,
    model: ServedModel,
    engine: PolicyEngine,
    start: tuple[int, ...],
    end: tuple[int, ...],
) -> None:
    """A Quiet-STaR checkpoint was trained with its own thought delimiters, the only ones with
    trained embeddings: other strings would run the learned mixing head on thoughts it never
    saw, so they are refused (naming the checkpoint's own one is fine)."""
    if not model.has_mixing_head:
        return
    own_start, own_end = resolve_delimiters(engine.tokenizer, None, None)
    for field, value, ids, own in (
        ("start_token", params.start_token, start, own_start),
        ("end_token", params.end_token, end, own_end),
    ):
        if value is not None and ids != own:
            raise APIError(
                f"quiet_star.{field} {value!r} is not supported on this Quiet-STaR checkpoint: "
                f"only its own delimiter ({engine.tokenizer.decode(list(own))!r}) has a "
                "trained embedding; leave the field out",
                param=f"quiet_star.{field}",
            )
