"""Registers the Quiet-STaR architecture with vLLM's `ModelRegistry`.

Entry point: `[project.entry-points."vllm.general_plugins"] quiet_star = ...:register`, which
vLLM runs in every process it starts (API server, engine core, workers, its model-inspection
subprocess) once the package is installed. The gateway also calls `register()` itself before
building the engine, and the logits-processor module calls it on import (vLLM imports that
module in every worker before loading the model), so the model also resolves from a checkout
whose entry point is not installed. Registration is lazy (`module:Class`) and idempotent.
"""

from __future__ import annotations

from kernels.quiet_star.checkpoint import ARCHITECTURE, MODEL_CLASS


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
