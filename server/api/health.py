"""What `GET /health` reports: 200 only when this process can serve a completion right now.

Why every engine: a REBASE request with the `vllm_prm` reward needs the PRM engine as much as
the policy engine, so a dead PRM engine makes the gateway unhealthy too. While draining (after
SIGTERM) the answer is 503 so load balancers stop sending traffic before the process exits.
"""

from __future__ import annotations

from typing import Any

from server.api.lifecycle import Lifecycle


def engines_of(service: Any) -> dict[str, Any]:
    """The engines a completion service depends on, by name (policy, and PRM if any); each
    has `check_health()` and `errored` (the policy engine: in-process or remote replicas)."""
    engines = {"policy": service.engine}
    prm = service.resources.vllm_prm
    if prm is not None:
        engines["prm"] = prm.llm
    return engines


async def health_report(lifecycle: Lifecycle, service: Any | None) -> tuple[int, dict]:
    """(status code, body) for `/health`."""
    if lifecycle.failure is not None:
        return 503, {"status": "unhealthy", "error": lifecycle.failure}
    if lifecycle.draining:
        return 503, {"status": "draining"}
    if service is None:
        return 503, {"status": "starting"}
    for name, llm in engines_of(service).items():
        if llm is None:
            return 503, {"status": "unhealthy", "error": f"the {name} engine is not running"}
        try:
            await llm.check_health()
        except Exception as exc:
            return 503, {"status": "unhealthy", "error": f"{name} engine: {exc}"}
    return 200, {"status": "ok"}
