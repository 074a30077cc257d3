"""A real process reward model served by a second vLLM engine in pooling mode (STEP pooling).

Why a second engine: a trained PRM (Math-Shepherd, Qwen2.5-Math-PRM) is the reward REBASE was
designed for, and vLLM scores a whole path in one prefill, returning one output per step tag.
The policy engine keeps running; this one starts beside it (its own engine-core process).

Two checkpoint styles, each reproducing its model card's recipe:

* ``math_shepherd`` (``peiyi9979/math-shepherd-mistral-7b-prm``): a causal LM. The input is
  ``f"{question} {output}"`` with ``output = "Step 1: ... ки\\nStep 2: ... ки"``; the score of a
  step is ``softmax(logits[tag_position, [+, -]])[+]``, the LM's next-token logits at each "ки"
  restricted to the two label tokens. vLLM 0.32 has no pooling head that keeps the LM head, so the
  model is converted to a 2-label classifier whose weights are the LM head's rows of "+" and "-"
  (``convert="classify"`` with ``hf_overrides={"classifier_from_token": [+, -], "method":
  "no_post_processing"}``); the classifier's two logits at a tag ARE those two LM logits.
  ``PoolerConfig.returned_token_ids`` does not do this in 0.32: it indexes the pooled hidden
  states, not the vocabulary.
* ``qwen_prm`` (``Qwen/Qwen2.5-Math-PRM-7B``): ``Qwen2ForProcessRewardModel``, a token
  classification head with 2 labels. The input is the chat template of (system, question,
  ``"<extra_0>".join(steps) + "<extra_0>"``); the score is ``softmax(logits[sep])[1]``.

Both run as ``runner="pooling"``, ``PoolerConfig(tok_pooling_type="STEP", step_tag_id=tag)``, one
``AsyncLLM.encode(prompt, PoolingParams(task="token_classify", use_activation=False,
step_tag_id=tag))`` per path: the engine returns the raw 2-label logits at each tag position and
the softmax is ours (float64), so the score is exactly the card's, whatever activation vLLM would
pick. STEP pooling turns prefix caching and chunked prefill off (vLLM 0.32: a causal pooling model
with STEP pooling supports neither), so every call prefills its whole path; the meter is charged
the prompt minus ``num_cached_tokens`` (0 today).

Step texts are sanitised (the tag text is removed from them) so that there is exactly one tag per
step. If the engine returns fewer tag outputs than steps — the prompt was cut at the engine's
``max_model_len``, keeping the question and the first steps — the missing steps get the last
score that was computed (0.5 if none): REBASE then sees "no new evidence" for those steps rather
than a score from a prompt with its question cut off. The cut is logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from server.core.request_ids import engine_request_id
from server.rewards.base import RewardModel

if TYPE_CHECKING:
    from server.core.flops import FlopsModel
    from server.core.usage import UsageMeter

__all__ = [
    "DEFAULT_STEP_TAGS",
    "QWEN_PRM_SYSTEM_PROMPT",
    "PrmStyle",
    "VllmPrmConfig",
    "VllmProcessRewardModel",
    "align_step_scores",
    "format_math_shepherd",
    "format_qwen_prm",
    "label_probabilities",
    "prm_config_from_settings",
    "resolve_label_token_ids",
    "resolve_step_tag_id",
]

logger = logging.getLogger(__name__)

PrmStyle = Literal["math_shepherd", "qwen_prm"]
DEFAULT_STEP_TAGS: dict[str, str] = {"math_shepherd": "ки", "qwen_prm": "<extra_0>"}
QWEN_PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
NEUTRAL = 0.5
_STEP_PREFIX_RE = re.compile(r"^Step\s*\d+\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class VllmPrmConfig:
    """How to serve the PRM engine. ``step_tag=None`` means the style's own tag ("ки", "<extra_0>").

    On one GPU the policy and the PRM share the memory: their ``gpu_memory_utilization`` must add
    up to less than 1 (lower the policy's too). On CPU ``kv_cache_gib`` becomes this engine's
    ``VLLM_CPU_KVCACHE_SPACE``.
    """

    model: str
    style: PrmStyle = "math_shepherd"
    step_tag: str | None = None
    positive_token: str = "+"
    negative_token: str = "-"
    dtype: str = "auto"
    block_size: int | None = None
    kv_cache_gib: int = 4
    max_model_len: int | None = None
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.35
    max_num_seqs: int = 64
    trust_remote_code: bool = False
    system_prompt: str = QWEN_PRM_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if self.style not in DEFAULT_STEP_TAGS:
            raise ValueError(
                f"style must be one of {sorted(DEFAULT_STEP_TAGS)}, got {self.style!r}"
            )
        if self.step_tag is not None and not self.step_tag.strip():
            raise ValueError("step_tag must not be blank")

    @property
    def tag(self) -> str:
        return self.step_tag if self.step_tag is not None else DEFAULT_STEP_TAGS[self.style]

    @property
    def positive_index(self) -> int:
        """Which of the two pooled labels means "correct": "+" is column 0 of ["+", "-"]
        (math_shepherd); Qwen's label 1 is positive."""
        return 0 if self.style == "math_shepherd" else 1


def prm_config_from_settings(settings: Any) -> VllmPrmConfig | None:
    """The PRM engine the gateway's settings ask for (``prm_model``), or None.

    Engine knobs follow the policy's (resolved) ones. On a GPU the PRM gets what the policy left
    (``0.95 - gpu_memory_utilization``): a 7B PRM beside a 7B policy needs the policy lowered to
    about 0.45."""
    model = getattr(settings, "prm_model", None)
    if not model:
        return None
    return VllmPrmConfig(
        model=model,
        style=getattr(settings, "prm_style", "math_shepherd"),
        dtype=settings.dtype or "auto",
        block_size=settings.block_size,
        kv_cache_gib=settings.kv_cache_gib,
        max_model_len=settings.max_model_len,
        enforce_eager=bool(settings.enforce_eager),
        gpu_memory_utilization=max(0.05, round(0.95 - settings.gpu_memory_utilization, 2)),
        trust_remote_code=settings.trust_remote_code,
    )


# --- model-card recipes (pure functions, unit-tested without an engine) ----------------------


def resolve_step_tag_id(tokenizer: Any, step_tag: str) -> int:
    """The tag's token id as the cards compute it (``encode(tag)[-1]``).

    Warns when the tag is several tokens: then only its last token marks the step."""
    ids = list(tokenizer.encode(step_tag, add_special_tokens=False))
    if not ids:
        raise ValueError(f"step tag {step_tag!r} encodes to no token")
    if len(ids) > 1:
        logger.warning(
            "step tag %r is %d tokens; using the last, id %d", step_tag, len(ids), ids[-1]
        )
    return ids[-1]


def resolve_label_token_ids(tokenizer: Any, positive: str, negative: str) -> tuple[int, int]:
    """Ids of the good/bad label tokens, the Math-Shepherd card's way: ``encode("+ -")``
    ([648, 387] on its Mistral tokenizer), else each label alone; each must be one token."""
    pair = list(tokenizer.encode(f"{positive} {negative}", add_special_tokens=False))
    if len(pair) == 2:
        return pair[0], pair[1]
    single = [list(tokenizer.encode(t, add_special_tokens=False)) for t in (positive, negative)]
    if all(len(ids) == 1 for ids in single):
        return single[0][0], single[1][0]
    raise ValueError(f"label tokens {positive!r}/{negative!r} are not single tokens: {single}")


def _clean(text: str, step_tag: str) -> str:
    """A step without the tag text (one tag per step, placed by us) and without outer space."""
    return text.replace(step_tag, " ").strip()


def format_math_shepherd(question: str, steps: Sequence[str], step_tag: str = "ки") -> str:
    """``f"{question} {output}"``, each step ``"Step k: text ки"``, joined by newlines.

    Steps that already start with "Step k:" (a policy prompted in that format) keep their own
    numbering; others get one, since Math-Shepherd was trained on numbered steps."""
    lines = []
    for k, step in enumerate(steps, start=1):
        text = _clean(step, step_tag)
        if not _STEP_PREFIX_RE.match(text):
            text = f"Step {k}: {text}"
        lines.append(f"{text} {step_tag}")
    return f"{_clean(question, step_tag)} " + "\n".join(lines)


def format_qwen_prm(
    tokenizer: Any,
    question: str,
    steps: Sequence[str],
    step_tag: str = "<extra_0>",
    system_prompt: str = QWEN_PRM_SYSTEM_PROMPT,
) -> str:
    """The Qwen2.5-Math-PRM card's conversation string (chat template, no generation prompt)."""
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": _clean(question, step_tag)},
        {
            "role": "assistant",
            "content": "".join(f"{_clean(s, step_tag)}{step_tag}" for s in steps),
        },
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def label_probabilities(data: Any, positive_index: int) -> list[float]:
    """P(positive) per tag row of raw pooled logits: shape [n, 2] -> softmax, [n, 1] or [n] ->
    sigmoid (a single "positive minus negative" logit)."""
    rows = data.tolist() if hasattr(data, "tolist") else list(data)
    out = []
    for row in rows:
        values = [float(v) for v in row] if isinstance(row, list | tuple) else [float(row)]
        if len(values) == 1:
            x = values[0]
            p = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        elif len(values) == 2:
            top = max(values)
            exps = [math.exp(v - top) for v in values]
            p = exps[positive_index] / sum(exps)
        else:
            raise ValueError(f"expected 1 or 2 labels per tag, got {len(values)}")
        out.append(p if math.isfinite(p) else NEUTRAL)
    return out


def align_step_scores(tag_scores: Sequence[float], n_steps: int) -> list[float]:
    """One score per step from the scores at the tag positions.

    More tags than steps (a tag inside the question's template): the last ``n_steps`` are the
    steps'. Fewer (the prompt was cut): the missing steps repeat the last score, 0.5 if none."""
    scores = [min(1.0, max(0.0, s)) for s in tag_scores][-n_steps:] if n_steps else []
    fill = scores[-1] if scores else NEUTRAL
    return scores + [fill] * (n_steps - len(scores))


# --- the engine ----------------------------------------------------------------------------


def build_prm_engine_args(
    config: VllmPrmConfig, step_tag_id: int, label_tokens: Sequence[str] | None
) -> Any:
    """vLLM 0.32 engine arguments for STEP pooling of either style.

    ``label_tokens`` (the vocabulary strings of "+"/"-") is needed for math_shepherd only."""
    from vllm import AsyncEngineArgs
    from vllm.config import PoolerConfig

    kwargs: dict[str, Any] = {}
    if config.style == "math_shepherd":
        if not label_tokens or len(label_tokens) != 2:
            raise ValueError("math_shepherd needs the two label tokens")
        kwargs["convert"] = "classify"
        kwargs["hf_overrides"] = {
            "classifier_from_token": list(label_tokens),
            "method": "no_post_processing",
        }
    if config.block_size is not None:
        kwargs["block_size"] = config.block_size
    return AsyncEngineArgs(
        model=config.model,
        runner="pooling",
        pooler_config=PoolerConfig(tok_pooling_type="STEP", step_tag_id=step_tag_id),
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        trust_remote_code=config.trust_remote_code,
        # vLLM's loggers off: a second engine's would unregister the policy's vllm:* series
        # (its tokens are counted by server/rewards/prm_stats.py instead).
        disable_log_stats=True,
        **kwargs,
    )


class VllmProcessRewardModel(RewardModel):
    """A trained PRM on its own vLLM engine; ``start()`` it before scoring, ``shutdown()`` after.

    Its calls are charged to the meter as component "reward" at this model's size: a meter whose
    ``reward_flops`` is unset gets ``self.flops`` (a request uses one reward model)."""

    name = "vllm_prm"

    def __init__(self, config: VllmPrmConfig) -> None:
        self.config = config
        self.llm: Any = None
        self.tokenizer: Any = None
        self.step_tag_id: int | None = None
        self.label_token_ids: tuple[int, int] | None = None
        self.max_model_len: int | None = None
        self.flops: FlopsModel | None = None

    @property
    def started(self) -> bool:
        return self.llm is not None

    def start(self) -> VllmProcessRewardModel:
        """Start the engine (blocking; tens of seconds). Idempotent."""
        if self.started:
            return self
        from vllm.platforms import current_platform
        from vllm.tokenizers import get_tokenizer

        from server.engines.vllm_startup import engine_environment, start_async_llm
        from server.rewards.prm_stats import PrmTokenLogger

        cfg = self.config
        self.tokenizer = get_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.step_tag_id = resolve_step_tag_id(self.tokenizer, cfg.tag)
        label_tokens = None
        if cfg.style == "math_shepherd":
            self.label_token_ids = resolve_label_token_ids(
                self.tokenizer, cfg.positive_token, cfg.negative_token
            )
            label_tokens = self.tokenizer.convert_ids_to_tokens(list(self.label_token_ids))
        args = build_prm_engine_args(cfg, self.step_tag_id, label_tokens)
        logger.info(
            "starting PRM engine %s (%s, tag id %d)", cfg.model, cfg.style, self.step_tag_id
        )
        env = engine_environment(cpu=current_platform.is_cpu(), kv_cache_gib=cfg.kv_cache_gib)
        # its own token counter (vLLM's default loggers stay off: see build_prm_engine_args)
        self.llm = start_async_llm(args, env, stat_loggers=[PrmTokenLogger])
        self.max_model_len = self.llm.model_config.max_model_len
        self.flops = _flops_model(self.llm.model_config.hf_config)
        return self

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    def prompt_token_ids(self, question: str, steps: Sequence[str]) -> list[int]:
        """The path as the card feeds it to the model, cut at ``max_model_len`` (head kept)."""
        cfg = self.config
        if cfg.style == "math_shepherd":
            text = format_math_shepherd(question, steps, cfg.tag)
        else:
            text = format_qwen_prm(self.tokenizer, question, steps, cfg.tag, cfg.system_prompt)
        ids = list(self.tokenizer.encode(text))  # with the model's special tokens, as the cards
        limit = self.max_model_len or len(ids)
        if len(ids) > limit:
            logger.warning("PRM prompt of %d tokens cut to %d", len(ids), limit)
            ids = ids[:limit]
        return ids

    async def score(
        self,
        question: str,
        steps_batch: Sequence[Sequence[str]],
        *,
        meter: UsageMeter | None = None,
    ) -> list[list[float]]:
        """Score every step of every path; all paths go to the engine at once (one prefill each)."""
        if not self.started:
            raise RuntimeError("the PRM engine is not started; call start() first")
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._score_path(question, list(steps), meter))
                for steps in steps_batch
            ]
        return [task.result() for task in tasks]

    async def _score_path(
        self, question: str, steps: list[str], meter: UsageMeter | None
    ) -> list[float]:
        if not steps:
            return []
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        ids = self.prompt_token_ids(question, steps)
        params = PoolingParams(
            task="token_classify", use_activation=False, step_tag_id=self.step_tag_id
        )
        final = None
        async for output in self.llm.encode(
            TokensPrompt(prompt_token_ids=ids), params, engine_request_id()
        ):
            final = output
        if final is None:
            raise RuntimeError("the PRM engine returned no output")
        if meter is not None:
            meter.charge_reward_at(self.flops)  # this model's size, not the policy's
            meter.record_prefill(
                prompt_tokens=len(ids),
                cached_tokens=int(getattr(final, "num_cached_tokens", 0) or 0),
                component="reward",
            )
        tag_scores = label_probabilities(final.outputs.data, self.config.positive_index)
        if len(tag_scores) < len(steps):
            logger.warning("PRM saw %d of %d step tags", len(tag_scores), len(steps))
        return align_step_scores(tag_scores, len(steps))


def _flops_model(hf_config: Any) -> FlopsModel | None:
    from server.core.flops import FlopsModel

    try:
        return FlopsModel.from_hf_config(hf_config)
    except (ValueError, NotImplementedError, TypeError, AttributeError, KeyError) as exc:
        logger.warning("no FLOPs model for the PRM (%s); its calls are charged as the policy", exc)
        return None
