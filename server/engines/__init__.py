"""Policy engines behind one interface: in-process vLLM (server/engines/inprocess.py) or remote
replicas.

See server/engines/base.py for the interface and docs/scaling.md for the remote deployment.
"""

from server.engines.base import PolicyEngine

__all__ = ["PolicyEngine", "start_policy_engine"]


def start_policy_engine(settings) -> PolicyEngine:
    """The engine the settings ask for: remote replicas behind `--engine-url`, else the
    in-process AsyncLLM (the default; the README commands do not change). Blocking."""
    if settings.engine_url:
        from server.engines.remote import RemoteEngine

        return RemoteEngine.start(settings)
    from server.engines.inprocess import Engine

    return Engine.start(settings)
