"""Build a tiny random Quiet-STaR checkpoint in the reference's format (ezelikman/quiet-star).

Same config keys as `ezelikman/quietstar-8-ahead` (Mistral + `max_thoughts`, the talk-head
flags, architectures = MistralForCausalLM), same tensor names and shapes scaled down (the
Mistral body, `start_embedding` / `end_embedding` [2, h], `talk_head.0.{0,2,4}` with the
reference's biases), sharded safetensors with an index, and a Llama-style tokenizer (Metaspace,
BOS added) with `<|startthought|>` / `<|endthought|>` appended as added special tokens, so
the base tokenizer's `vocab_size` is 2 less than the model's, as in the real one (32000/32002).
The vocabulary is kept under 100 so a test can ask for every token's logprob.
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


def build_quiet_star_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "float32",
        "transformers_version": "4.37.0.dev0",
        **QUIET_STAR_KEYS,
    }
    weights = _weights(config, seed)
    # Two shards and an index, like the released checkpoint (which has three).
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    index = {
        "metadata": {"total_size": sum(t.numel() * 4 for t in weights.values())},
        "weight_map": {},
    }
    for file, keys in shards.items():
        save_file(
            {k: weights[k].contiguous() for k in keys}, directory / file, metadata={"format": "pt"}
        )
        index["weight_map"].update(dict.fromkeys(keys, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]})
    )
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    import sys

    print(build_quiet_star_checkpoint(Path(sys.argv[1])))
