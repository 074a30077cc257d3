"""docker-compose.yml is secure by default (no Docker here: the YAML's structure is checked).

Loopback-only ports unless the operator opts in, a required gateway API key, no anonymous or
admin/admin Grafana, and a stop grace period long enough for the gateway's drain.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
GATEWAYS = ["gateway", "gateway-cpu"]
# ${VAR:-default} / ${VAR:?message} / ${VAR}
INTERPOLATION = re.compile(r"^\$\{(?P<var>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}$")


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def _required(value: object) -> str:
    """The variable a `${VAR:?message}` value requires; fails for defaults or literals."""
    match = INTERPOLATION.match(str(value))
    assert match and match["op"] == ":?", f"{value!r} must be ${{VAR:?message}} (no default)"
    return match["var"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_ports_publish_on_loopback_unless_opted_in(name: str) -> None:
    for entry in SERVICES[name].get("ports", []):
        host, _, _ = str(entry).rpartition(":")[0].rpartition(":")
        match = INTERPOLATION.match(host)
        assert match, f"{name}: {entry!r} publishes on every interface"
        assert match["op"] == ":-" and match["arg"] == "127.0.0.1", entry
        assert match["var"] == "THINKSCALE_PUBLISH_ADDRESS", entry


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_requires_an_api_key(name: str) -> None:
    env = SERVICES[name]["environment"]
    assert _required(env["THINKSCALE_API_KEY"]) == "THINKSCALE_API_KEY"
    assert "THINKSCALE_ALLOW_INSECURE_NO_AUTH" not in env


@pytest.mark.parametrize("name", GATEWAYS)
def test_stop_grace_period_covers_the_gateway_drain(name: str) -> None:
    service = SERVICES[name]
    grace = float(service["environment"].get("THINKSCALE_SHUTDOWN_GRACE_S") or 0) or (
        Settings.model_fields["shutdown_grace_s"].default
    )
    # The drain, then up to 5 s to flush cut requests and 5 s for uvicorn, then engine stop.
    assert _duration_s(service["stop_grace_period"]) >= grace + 10


def test_grafana_has_no_anonymous_access_and_no_default_password() -> None:
    env = SERVICES["grafana"]["environment"]
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"
    assert _required(env["GF_SECURITY_ADMIN_PASSWORD"]) == "GRAFANA_ADMIN_PASSWORD"
