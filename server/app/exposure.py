"""Refuse to put an unauthenticated model on the network by accident.

Why at start-up and not per request: a gateway on 0.0.0.0 without an API key serves anyone who
can reach the port, and nothing in the responses tells the operator. Listening on loopback
needs no key (local development, tests); beyond it the operator sets `--api-key` or says
`--allow-insecure-no-auth` out loud.
"""

from __future__ import annotations

import ipaddress
from typing import Any

EXIT_INSECURE = 2


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to any interface


def has_api_key(settings: Any) -> bool:
    return any(getattr(settings, name, None) for name in ("api_key", "api_keys", "api_key_file"))


def insecure_exposure(settings: Any) -> str | None:
    """The reason not to start, or None when the settings are safe (or explicitly not)."""
    if is_loopback(settings.host) or has_api_key(settings):
        return None
    if getattr(settings, "allow_insecure_no_auth", False):
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: anyone who can reach "
        "this port could use the model. Set --api-key (THINKSCALE_API_KEY), listen on "
        "127.0.0.1, or pass --allow-insecure-no-auth (THINKSCALE_ALLOW_INSECURE_NO_AUTH=1) "
        "if the network in front of the gateway handles authentication."
    )
