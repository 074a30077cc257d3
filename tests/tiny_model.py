"""Build a tiny random-weight Llama (config + tokenizer + weights) for end-to-end tests.

Why: the real vLLM engine must run in the test suite, but no model hub is reachable and the
embedded SmolLM2 takes a minute to start on two CPU cores. A 2-layer Llama with a small
byte-level BPE tokenizer starts in seconds and exercises exactly the same code paths
(tokenizer, prefix cache, sampling, logits processors, metrics).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|startthought|>",
    "<|endthought|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips.",
    "How many clips did Natalia sell altogether in April and May? 48/2 = 24. 48 + 24 = 72. #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Q: What is 2 + 3? A: Let's think step by step. Step 1: 2 + 3 = 5. The answer is 5.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 = + - * / ( ) $ , . ? !",
    "Therefore, the answer (arabic numerals) is 42. Hello world, this is a test prompt.",
    # A judge's vocabulary: " Yes" and " No" must be single tokens for the policy-judge PRM.
    "Is the last step correct? Answer Yes or No. Answer: Yes Yes Yes No No No Yes No",
]


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on a small fixed corpus (no downloads)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """Write config, tokenizer and random weights of a 2-layer Llama into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: supported by every CPU attention backend
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id})
    )
    return directory


if __name__ == "__main__":
    import sys

    print(build_tiny_llama(Path(sys.argv[1])))
