"""The per-call seeds of a seeded sequence: one derivation (server.core.seeds) for Quiet-STaR's
decoder and REBASE's trees, giving exactly the seeds each gave before it was shared, so seeded
outputs (and the committed benchmark trees) stay the same."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace

from server.core.requests import SamplingSpec
from server.methods.rebase import SEEDS_PER_TREE, tree_seeds
from server.quiet_star.decoder import QuietStarDecoder
from server.quiet_star.params import QuietStarParams


class _Tokenizer:
    """Just what the decoder reads at construction: the fallback delimiters as single ids."""

    def __init__(self) -> None:
        self.all_special_ids: list[int] = []
        self.added_tokens_decoder: dict = {}

    def get_vocab(self) -> dict[str, int]:
        return {"<think>": 1, "</think>": 2}


def _decoder(seed: int | None, seed_base: int) -> QuietStarDecoder:
    engine = SimpleNamespace(
        tokenizer=_Tokenizer(),
        hf_config=SimpleNamespace(architectures=["LlamaForCausalLM"], vocab_size=64),
        eos_token_id=0,
    )
    sampling = SamplingSpec(max_tokens=4, seed=seed)
    return QuietStarDecoder(
        engine,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # no engine call: no charge
        QuietStarParams(),
        sampling,
        seed_base=seed_base,
        request_id="cmpl-x-p0",
    )


def _decoder_seeds(seed: int | None, seed_base: int, count: int = 3) -> list[int | None]:
    decoder = _decoder(seed, seed_base)
    return [decoder._seed() for _ in range(count)]


def test_quiet_star_calls_keep_their_seeds() -> None:
    # sequence 1 of a seed-5 request: seed_base 5 + 1, its calls 6 * 1_000_003 + k
    assert _decoder_seeds(5, 6) == [6_000_018, 6_000_019, 6_000_020]
    assert _decoder_seeds(0, 0) == [0, 1, 2]
    assert _decoder_seeds(None, 0) == [None, None, None]  # unseeded: vLLM's own randomness


def test_rebase_trees_keep_their_seeds() -> None:
    assert list(islice(tree_seeds(5, 0), 3)) == [5_000_015, 5_000_016, 5_000_017]
    tree_2 = 5_000_015 + 2 * SEEDS_PER_TREE
    assert list(islice(tree_seeds(5, 2), 2)) == [tree_2, tree_2 + 1]
    assert list(islice(tree_seeds(None, 1), 2)) == [SEEDS_PER_TREE, SEEDS_PER_TREE + 1]


def test_both_call_sites_derive_one_stream_from_one_seed() -> None:
    """A REBASE tree 0 and a Quiet-STaR sequence with the same seed draw the same stream: one
    derivation, not two constants that happen to agree."""
    decoder = _decoder(7, 7)
    assert [decoder._seed() for _ in range(5)] == list(islice(tree_seeds(7, 0), 5))
