"""Build a tiny random Quiet-STaR checkpoint in the reference's format (ezelikman/quiet-star).

Same config keys as `ezelikman/quietstar-8-ahead` (Mistral + `max_thoughts`, the talk-head
flags, architectures = MistralForCausalLM), same tensor names and shapes scaled down (the
Mistral body, `start_embedding` / `end_embedding` [2, h], `talk_head.0.{0,2,4}` with the
reference's biases), sharded safetensors with an index, and a Llama-style tokenizer (Metaspace,
BOS added) with `<|startthought|>` / `<|endthought|>` appended as added special tokens, so
the base tokenizer's `vocab_size` is 2 less than the model's, as in the real one (32000/32002).
The vocabulary is kept under 100 so a test can ask for every token's logprob.

`build_published_checkpoint` reproduces the layout of the *published* repository instead: bf16
shards with an index, a 32002-token vocabulary, and of the tokenizer files only
`added_tokens.json`; `build_mistral_tokenizer` builds the base tokenizer it is served with from
Mistral's own SentencePiece model (shipped in the `mistral_common` package), so "---" is one
token (`▁---`, 11940) as on `mistralai/Mistral-7B-v0.1`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

START, END = "<|startthought|>", "<|endthought|>"

_CORPUS = [
    "Q: Weng earns 12 an hour for babysitting. How much for 50 minutes?",
    "A: Let's think step by step. 12 / 60 = 0.2 per minute; 0.2 * 50 = 10. The answer is 10.",
    "Therefore, the answer (arabic numerals) is 42. --- a b c d e f g h i j k l m n o p q r",
    "s t u v w x y z 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) , . ? ! ; :",
    # "---" must be one token (the reference embeds both thought tokens as its first token,
    # and the gateway refuses a tokenizer where it is not one token of the base vocabulary).
    "--- --- --- --- ---",
]

QUIET_STAR_KEYS = {
    "max_thoughts": 10,  # n_ahead (8) + n_ahead_talk (1) + 1, as saved by the 8-ahead run
    "merged_talk_heads": True,
    "merged_lm_and_talk_heads": False,
    "merged_lm_and_think_heads": True,
    "use_concat_talk_head": True,
    "use_shallow_think": True,
    "use_shallow_talk": False,
    "use_complex_think_head": False,
    "use_complex_talk_head": True,
    "use_weighted_talk_head": True,
}


def build_tokenizer(base_vocab: int = 90) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # "never": a lone token keeps its leading space, so every id decodes to a distinct string
    # (the logprobs of the OpenAI API are keyed by token text).
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    # As the eval script does: add the thought tokens on top of the base vocabulary.
    fast.add_special_tokens({"additional_special_tokens": [START, END]})
    return fast


def _weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = h // heads

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm() -> torch.Tensor:
        return 1.0 + rnd(h, std=0.1)

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rnd(vocab, h, std=0.5)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(heads * hd, h, std=h**-0.5)
        w[p + "self_attn.k_proj.weight"] = rnd(kv * hd, h, std=h**-0.5)
        w[p + "self_attn.v_proj.weight"] = rnd(kv * hd, h, std=h**-0.5)
        w[p + "self_attn.o_proj.weight"] = rnd(h, heads * hd, std=h**-0.5)
        w[p + "mlp.gate_proj.weight"] = rnd(inter, h, std=h**-0.5)
        w[p + "mlp.up_proj.weight"] = rnd(inter, h, std=h**-0.5)
        w[p + "mlp.down_proj.weight"] = rnd(h, inter, std=inter**-0.5)
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
    w["model.norm.weight"] = norm()
    w["lm_head.weight"] = rnd(vocab, h, std=0.3)
    # Row 0: mean (used x embedding_scale = 100), row 1: log-std (unused at inference).
    w["start_embedding"] = torch.stack([rnd(h, std=0.005), torch.full((h,), -6.0)])
    w["end_embedding"] = torch.stack([rnd(h, std=0.005), torch.full((h,), -6.0)])
    w["talk_head.0.0.weight"] = rnd(h, 2 * h, std=(2 * h) ** -0.5)
    w["talk_head.0.0.bias"] = rnd(h, std=0.1)
    w["talk_head.0.2.weight"] = rnd(h, h, std=(2 / h) ** 0.5)
    w["talk_head.0.2.bias"] = rnd(h, std=0.1)
    w["talk_head.0.4.weight"] = rnd(1, h, std=h**-0.5)
    return w


def _config(vocab_size: int, bos: int, eos: int, dtype: str) -> dict:
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 64: vLLM's CPU attention needs >= 32
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype,
        "transformers_version": "4.37.0.dev0",
        **QUIET_STAR_KEYS,
    }


def _write_model(directory: Path, config: dict, weights: dict, shards: int) -> None:
    """Safetensors shards (names spread round-robin), their index, config and generation config."""
    names = sorted(weights)
    files = {
        f"model-{i + 1:05d}-of-{shards:05d}.safetensors": names[i::shards] for i in range(shards)
    }
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
        "weight_map": {},
    }
    for file, keys in files.items():
        save_file(
            {k: weights[k].contiguous() for k in keys}, directory / file, metadata={"format": "pt"}
        )
        index["weight_map"].update(dict.fromkeys(keys, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]})
    )


def build_quiet_star_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = _config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, "float32")
    # Two shards and an index, like the released checkpoint (which has three).
    _write_model(directory, config, _weights(config, seed), shards=2)
    tokenizer.save_pretrained(directory)
    return directory


MISTRAL_VOCAB = 32000  # Mistral-7B-v0.1's SentencePiece vocabulary
MISTRAL_DASHES_ID = 11940  # "▁---", the token the reference's thought embeddings start from


def mistral_sentencepiece_model() -> Path:
    """Mistral's 32000-token SentencePiece model, as shipped inside `mistral_common`."""
    from importlib.resources import files

    return Path(str(files("mistral_common") / "data" / "tokenizer.model.v1"))


def build_mistral_tokenizer(directory: Path) -> Path:
    """A Hugging Face tokenizer folder for Mistral's SentencePiece model (Llama class, BOS added,
    as `mistralai/Mistral-7B-v0.1` declares): the `--tokenizer` of the published layout."""
    import shutil

    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(mistral_sentencepiece_model(), directory / "tokenizer.model")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": True,
                "model_max_length": 1000000000000000019884624838656,
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == MISTRAL_VOCAB
    assert tokenizer.encode("---", add_special_tokens=False) == [MISTRAL_DASHES_ID]
    tokenizer.save_pretrained(directory)  # tokenizer.json too, like the hub repository
    return directory


def build_published_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    """`ezelikman/quietstar-8-ahead`'s layout with tiny random weights: three bf16 shards and an
    index, `vocab_size` 32002, `max_thoughts` 10, and `added_tokens.json` as its only tokenizer
    file (59 bytes, the two thought tokens at 32000 and 32001)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = _config(MISTRAL_VOCAB + 2, 1, 2, "bfloat16")
    weights = {k: v.to(torch.bfloat16) for k, v in _weights(config, seed).items()}
    _write_model(directory, config, weights, shards=3)
    added = {END: MISTRAL_VOCAB + 1, START: MISTRAL_VOCAB}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    return directory


if __name__ == "__main__":
    import sys

    print(build_quiet_star_checkpoint(Path(sys.argv[1])))
