"""Quiet-STaR the straightforward way: Hugging Face transformers, everything recomputed per token.

The reference point for ``quiet_star_bench speed``. For every output token it runs the model on
the full visible context (no KV cache kept across output tokens) to get the *base* next-token
distribution, appends the thought-start delimiter, samples ``t`` thought tokens one by one at
the thought temperature (start/end/EOS banned), appends the thought-end delimiter, takes the
*talk* distribution, mixes ``(1 - w) * base + w * post-thought`` in log-probability space,
samples the talk token, drops the thought and goes on. That is the per-token recomputation of
the reference eval (which also recomputes everything for every token), without its
all-positions-at-once training machinery.

The mixing and the thought masking call the same tensor functions the engine's logits processor
uses (``kernels.quiet_star.tensor_ops``), and the delimiters are resolved by the gateway's own
rule (``server.quiet_star.delimiters``), so both sides compute the same distributions; only
the random streams differ (torch's generator vs vLLM's per-request seeds).

Three cache modes (``--cache``):

* ``crop`` (the strong baseline): the KV cache is kept across output tokens and cropped back
  (``DynamicCache.crop``) after each talk token, ``--batch`` sequences decoded in lockstep
  (left-padded): per output token one call for ``[talk, start]``, one per thought token, the
  last with ``end``: ``t + 3`` positions, ``t + 1`` calls.
* ``thought``: the KV cache lives *within* one output token's thought (one full-context
  forward, then one forward per thought token); it is dropped before the next output token.
  ``t + 2`` model calls per output token, one of them over the context. Batch 1.
* ``none``: every model call re-runs the whole sequence (context + thought so far), as a
  cache-less reference would: ``t + 2`` full-context forwards per output token. Batch 1.

float32 on the CPU, ``torch.set_num_threads(2)``.

    python -m loadtest.benchmarks.hf_quiet_star --questions 2 --max-tokens 16 --out /tmp/r.json

(``quiet_star_bench speed`` runs it in alternating rounds against the gateway.)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from kernels.quiet_star import tensor_ops
from loadtest.harness import cli
from loadtest.harness.provenance import record_hf_side
from loadtest.harness.results import spread, write_result
from loadtest.harness.servers import EngineSettings
from server.quiet_star.delimiters import resolve_delimiters

CACHE_MODES = ("crop", "thought", "none")


@dataclass(frozen=True)
class QuietStarSettings:
    """The request's ``quiet_star`` block and sampling, as the gateway would get them."""

    thought_tokens: int = 4
    mixing_weight: float = 0.3
    thought_temperature: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    start_token: str | None = None  # None: the gateway's default for this tokenizer
    end_token: str | None = None
    ignore_eos: bool = True  # fixed-length outputs: seconds per token compare cleanly


@dataclass
class HFSequence:
    """One prompt's output and what it took."""

    prompt_tokens: int
    seconds: float
    token_ids: list[int]
    thoughts: list[list[int]] = field(default_factory=list)
    model_calls: int = 0
    forward_positions: int = 0  # positions run through the model, summed over calls
    text: str = ""

    @property
    def seconds_per_token(self) -> float:
        return self.seconds / max(len(self.token_ids), 1)


class HFQuietStar:
    """One model and tokenizer; ``generate`` decodes one prompt, one token at a time."""

    def __init__(
        self, model_path: str, settings: QuietStarSettings, threads: int = 2, cache: str = "thought"
    ) -> None:
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        record_hf_side(self.model, torch.get_num_threads())
        self.settings = settings
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}")
        self.cache = cache
        self.start_ids, self.end_ids = resolve_delimiters(
            self.tokenizer, settings.start_token, settings.end_token
        )
        self.eos = self.tokenizer.eos_token_id
        banned = {*self.start_ids, *self.end_ids, *([self.eos] if self.eos is not None else [])}
        self.banned = torch.tensor([sorted(banned)])

    # -- one output token --------------------------------------------------------------------
    def _forward(self, ids: list[int], past=None) -> tuple[torch.Tensor, object, int]:
        """Last-position logits, the cache, and how many positions ran."""
        out = self.model(
            input_ids=torch.tensor([ids]), past_key_values=past, use_cache=past is not None
        )
        return out.logits[0, -1:].float(), out.past_key_values, len(ids)

    def _step(self, context: list[int], gen: torch.Generator) -> tuple[int, list[int], int, int]:
        """(talk token, thought tokens, model calls, forward positions) for one output token."""
        s = self.settings
        calls = positions = 0
        thought: list[int] = []
        if self.cache == "thought":
            out = self.model(input_ids=torch.tensor([context]), use_cache=True)
            base_logits, past = out.logits[0, -1:].float(), out.past_key_values
            calls, positions = 1, len(context)
            pending = list(self.start_ids)  # forced tokens not yet run through the model
            for _ in range(s.thought_tokens):
                logits, past, n = self._forward(pending, past)
                calls, positions = calls + 1, positions + n
                thought.append(self._sample_thought(logits, gen))
                pending = [thought[-1]]
            post_logits, _, n = self._forward(pending + list(self.end_ids), past)
            calls, positions = calls + 1, positions + n
        else:
            base_logits, _, n = self._forward_full(context)
            calls, positions = 1, n
            prefix = context + list(self.start_ids)
            for _ in range(s.thought_tokens):
                logits, _, n = self._forward_full(prefix + thought)
                calls, positions = calls + 1, positions + n
                thought.append(self._sample_thought(logits, gen))
            post_logits, _, n = self._forward_full(prefix + thought + list(self.end_ids))
            calls, positions = calls + 1, positions + n
        talk = tensor_ops.talk_logits(
            torch.log_softmax(base_logits, dim=-1),
            post_logits,
            torch.tensor([s.mixing_weight]),
            torch.tensor([s.temperature]),
            torch.tensor([s.top_p]),
        )
        return self._sample(talk, gen), thought, calls, positions

    def _forward_full(self, ids: list[int]) -> tuple[torch.Tensor, None, int]:
        out = self.model(input_ids=torch.tensor([ids]), use_cache=False)
        return out.logits[0, -1:].float(), None, len(ids)

    def _sample_thought(self, logits: torch.Tensor, gen: torch.Generator) -> int:
        temps = torch.tensor([self.settings.thought_temperature])
        return self._sample(tensor_ops.thought_logits(logits.clone(), temps, self.banned), gen)

    @staticmethod
    def _sample(logits: torch.Tensor, gen: torch.Generator) -> int:
        probs = torch.softmax(logits[0], dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen).item())

    # -- one prompt -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt: str, max_tokens: int, seed: int = 0) -> HFSequence:
        prompt_ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        gen = torch.Generator().manual_seed(seed)
        seq = HFSequence(prompt_tokens=len(prompt_ids), seconds=0.0, token_ids=[])
        start = time.perf_counter()
        while len(seq.token_ids) < max_tokens:
            token, thought, calls, positions = self._step(prompt_ids + seq.token_ids, gen)
            seq.model_calls += calls
            seq.forward_positions += positions
            seq.thoughts.append(thought)
            if token == self.eos and not self.settings.ignore_eos:
                break
            seq.token_ids.append(token)
        seq.seconds = time.perf_counter() - start
        seq.text = self.tokenizer.decode(seq.token_ids, skip_special_tokens=True)
        return seq

    # -- a batch in lockstep, KV cache kept and cropped --------------------------------------
    @torch.inference_mode()
    def generate_batch(
        self, prompts: Sequence[str], max_tokens: int, seed: int = 0
    ) -> list[HFSequence]:
        """Decode `prompts` together, one output token per round for every sequence (fixed
        length: EOS is never checked, as with `ignore_eos`). The wall time of the batch is
        every sequence's `seconds`."""
        s = self.settings
        ids = [list(self.tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
        width, batch = max(len(i) for i in ids), len(ids)
        pad = self.eos if self.eos is not None else 0
        pads = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        mask = torch.zeros(batch, 0, dtype=torch.long)  # grows with the cache
        gen = torch.Generator().manual_seed(seed)
        cache = DynamicCache()
        calls = positions = 0
        start = time.perf_counter()

        def forward(tokens: torch.Tensor, new_mask: torch.Tensor | None = None) -> torch.Tensor:
            """Run `tokens` [batch, n] after the cache; logits of every new position."""
            nonlocal mask, calls, positions
            new_mask = torch.ones_like(tokens) if new_mask is None else new_mask
            mask = torch.cat([mask, new_mask], dim=1)
            pos = mask.cumsum(-1)[:, -tokens.shape[1] :] - 1
            out = self.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=pos.clamp(min=0),
                past_key_values=cache,
                use_cache=True,
            )
            calls, positions = calls + 1, positions + tokens.shape[1] * batch
            return out.logits.float()

        base = forward(torch.tensor([[pad] * (width - len(i)) + i for i in ids]), pads)[:, -1]
        kept = mask.shape[1]  # cache length of the visible text
        out: list[list[int]] = [[] for _ in ids]
        thoughts: list[list[list[int]]] = [[] for _ in ids]
        talk_ids: torch.Tensor | None = None  # last round's talk tokens, run first this round
        temps = torch.full((batch,), s.thought_temperature)
        banned = self.banned.expand(batch, -1)
        while len(out[0]) < max_tokens:
            pending = torch.tensor([list(self.start_ids)] * batch)
            if talk_ids is not None:
                pending = torch.cat([talk_ids[:, None], pending], 1)
            thought = torch.empty(batch, 0, dtype=torch.long)
            for k in range(s.thought_tokens + 1):
                if k == s.thought_tokens:
                    pending = torch.cat([pending, torch.tensor([list(self.end_ids)] * batch)], 1)
                logits = forward(pending)
                if talk_ids is not None and k == 0:
                    base = logits[:, 0]
                if k < s.thought_tokens:
                    nxt = self._sample_rows(
                        tensor_ops.thought_logits(logits[:, -1], temps, banned), gen
                    )
                    thought = torch.cat([thought, nxt[:, None]], 1)
                    pending = nxt[:, None]
            mixed = tensor_ops.talk_logits(
                torch.log_softmax(base, dim=-1),
                logits[:, -1],
                torch.full((batch,), s.mixing_weight),
                torch.full((batch,), s.temperature),
                torch.full((batch,), s.top_p),
            )
            talk_ids = self._sample_rows(mixed, gen)
            cache.crop(kept)  # drop the thought: the cache holds the visible text again
            mask = mask[:, :kept]
            kept += 1  # the talk token is run (and kept) at the start of the next round
            for i in range(batch):
                out[i].append(int(talk_ids[i]))
                thoughts[i].append(thought[i].tolist())
        seconds = time.perf_counter() - start
        return [
            HFSequence(
                len(i), seconds, o, th, model_calls=calls, forward_positions=positions // batch,
                text=self.tokenizer.decode(o, skip_special_tokens=True),
            )
            for i, o, th in zip(ids, out, thoughts, strict=True)
        ]  # fmt: skip

    @staticmethod
    def _sample_rows(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)[:, 0]

    @torch.inference_mode()
    def generate_plain(self, prompt: str, max_tokens: int) -> HFSequence:
        """The base model alone (``generate``, KV cache, greedy): the cost of not thinking."""
        ids = torch.tensor([self.tokenizer.encode(prompt, add_special_tokens=False)])
        start = time.perf_counter()
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            pad_token_id=self.eos,
        )
        new = out[0, ids.shape[1] :].tolist()
        return HFSequence(ids.shape[1], time.perf_counter() - start, new, model_calls=len(new))


def run(
    model_path: str,
    prompts: Sequence[str],
    settings: QuietStarSettings,
    max_tokens: int,
    *,
    seed: int = 0,
    cache: str = "thought",
    plain: bool = True,
    batch: int = 1,
) -> dict:
    """Decode every prompt (one after another, or `batch` at a time in lockstep with the
    `crop` cache); per-sequence stats plus the totals (`total_s` is wall time)."""
    loaded = time.perf_counter()
    hf = HFQuietStar(model_path, settings, cache=cache)
    load_s = time.perf_counter() - loaded
    if cache == "crop":  # warm-up (allocator, kernels), not counted
        hf.generate_batch(prompts[:batch], 2, seed=seed)
    else:
        hf.generate(prompts[0], 2, seed=seed)
    sequences = []
    total_s = 0.0
    if cache == "crop":
        for i in range(0, len(prompts), batch):
            group = hf.generate_batch(prompts[i : i + batch], max_tokens, seed=seed + i)
            total_s += group[0].seconds
            print(
                f"hf quiet_star (crop) #{i}..: batch {len(group)} x {max_tokens} tokens in "
                f"{group[0].seconds:.1f}s ({group[0].model_calls} model calls)",
                flush=True,
            )
            sequences += group
    else:
        for i, prompt in enumerate(prompts):
            seq = hf.generate(prompt, max_tokens, seed=seed + i)
            print(
                f"hf quiet_star #{i}: {len(seq.token_ids)} tokens in {seq.seconds:.1f}s "
                f"({seq.seconds_per_token:.3f} s/token, {seq.model_calls} model calls)",
                flush=True,
            )
            sequences.append(seq)
            total_s += seq.seconds
    plain_seqs = [hf.generate_plain(p, max_tokens) for p in prompts[:2]] if plain else []
    total_tokens = sum(len(s.token_ids) for s in sequences)
    return {
        "settings": asdict(settings),
        "cache": cache,
        "batch": batch if cache == "crop" else 1,
        "start_token_ids": list(hf.start_ids),
        "end_token_ids": list(hf.end_ids),
        "load_s": load_s,
        "total_s": total_s,
        "output_tokens": total_tokens,
        "seconds_per_token": total_s / max(total_tokens, 1),  # wall s / output token
        "forward_positions_per_token": sum(s.forward_positions for s in sequences)
        / max(total_tokens, 1),
        "median_seconds_per_token": spread([s.seconds_per_token for s in sequences])["median"],
        "plain_seconds_per_token": (
            sum(s.seconds for s in plain_seqs) / max(sum(len(s.token_ids) for s in plain_seqs), 1)
            if plain_seqs
            else None
        ),
        "sequences": [asdict(s) for s in sequences],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--data", default=None)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--thought-tokens", type=int, default=4)
    parser.add_argument("--mixing-weight", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--start-token", default=None)
    parser.add_argument("--end-token", default=None)
    parser.add_argument("--cache", choices=CACHE_MODES, default="thought")
    parser.add_argument("--batch", type=int, default=1, help="lockstep batch (crop cache)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-decoding run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = QuietStarSettings(
        thought_tokens=args.thought_tokens,
        mixing_weight=args.mixing_weight,
        temperature=args.temperature,
        start_token=args.start_token,
        end_token=args.end_token,
    )
    prompts = [prompt for _, prompt in cli.questions(args, args.questions)]
    model = EngineSettings(model=args.model).model_path()
    result = run(
        model,
        prompts,
        settings,
        args.max_tokens,
        seed=args.seed,
        cache=args.cache,
        batch=args.batch,
        plain=not args.no_plain,
    )
    print(f"HF Quiet-STaR ({args.cache} cache): {result['seconds_per_token']:.3f} s/token")
    write_result(args.out, "hf_quiet_star", result)


if __name__ == "__main__":
    main()
