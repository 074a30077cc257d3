"""Code that runs inside the vLLM engine process (logits processors and their tensor math)."""
