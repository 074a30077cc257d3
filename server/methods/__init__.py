"""The method registry: the one place that lists the methods the gateway serves.

Adding a method = one new module under `server/methods/` plus one entry here.
"""

from __future__ import annotations

from server.methods.base import Method
from server.methods.baseline import Baseline
from server.methods.quiet_star import QuietStar
from server.methods.quiet_star_rebase import QuietStarRebase
from server.methods.rebase import Rebase

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Baseline,
        QuietStar,
        Rebase,
        QuietStarRebase,
    )
}  # fmt: skip


def method_names() -> list[str]:
    return list(METHODS)


def parameter_blocks() -> dict[str, type]:
    """Every parameter block any method reads, for rejecting unknown top-level keys."""
    blocks: dict[str, type] = {}
    for cls in METHODS.values():
        blocks.update(cls.parameter_blocks)
    return blocks
