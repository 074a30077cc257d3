"""The run behind docs/results.md: every method on the first 32 GSM8K test problems.

Starts its own gateway (``EngineSettings``: float32, block 32, 4 GiB KV cache), replays with
``python -m loadtest run`` (which writes records.jsonl, summary.json, report.md and the plots
into --out), and stops the gateway; all under the measurement lock. Extra arguments after
``--`` go to ``loadtest run`` and win over the ones here.

    python -m loadtest.benchmarks.results_run --out docs/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loadtest.cli import main as loadtest_main
from loadtest.harness.lock import LockHeld, measurement_lock
from loadtest.harness.provenance import pin_source
from loadtest.harness.servers import EngineSettings, exit_on_sigterm, start_gateway


def replay_args(url: str, out: Path, mixing_weight: float) -> list[str]:
    qs = {"thought_tokens": 4, "mixing_weight": mixing_weight}
    rb = {"width": 3, "max_step_tokens": 48, "step_delimiter": "\n"}
    params = {
        "quiet_star": {"quiet_star": qs},
        "rebase": {"rebase": rb},
        "quiet_star+rebase": {"rebase": rb, "quiet_star": {**qs, "think": "step_start"}},
    }
    return [
        "run", "--url", url, "--split", "test", "--limit", "32", "--max-tokens", "96",
        "--temperature", "0.7", "--sample-seed", "0", "--concurrency", "8", "--no-progress",
        "--methods", "baseline,quiet_star,rebase,quiet_star+rebase",
        "--method-params", json.dumps(params), "--out", str(out),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    p.add_argument("--mixing-weight", type=float, default=0.1)
    p.add_argument("--wait-lock", action="store_true")
    p.add_argument("extra", nargs="*", help="more `loadtest run` arguments (after --)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    pin_source(args.out)  # the tree as the run starts; its own output is not a change
    try:
        with measurement_lock("results_run", wait=args.wait_lock):
            log = args.out / "gateway.log"
            with start_gateway(EngineSettings(model=args.model), log, attempts=2) as gw:
                return loadtest_main(replay_args(gw.url, args.out, args.mixing_weight) + args.extra)
    except LockHeld as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
