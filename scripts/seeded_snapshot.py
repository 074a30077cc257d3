"""Record what a checkout's gateway answers to a fixed set of seeded requests, one at a time.

Why: a refactor must not change behaviour, and on a CPU the numerics of a batch depend on what
else is in it; requests sent one after another, seeded, on float32, give the same tokens for
the same code. Run it against two checkouts and compare the files: identical text, token
counts, usage and method details (the REBASE trees) mean the same behaviour.

    python scripts/seeded_snapshot.py --checkout /path/to/old --out old.json
    python scripts/seeded_snapshot.py --checkout . --out new.json
    python scripts/seeded_snapshot.py --compare old.json new.json

Each checkout's gateway serves the embedded SmolLM2-135M-Instruct (converted once into the
cache folder) with float32, started from that checkout with this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?"
)
REQUESTS: dict[str, dict] = {
    "baseline": {"prompt": f"Q: {QUESTION}\nA:", "max_tokens": 48, "n": 2, "seed": 1234,
                 "temperature": 0.8, "logprobs": 2},
    "baseline_stop": {"prompt": "Count: 1, 2, 3,", "max_tokens": 32, "seed": 3, "stop": [", 9"],
                      "temperature": 0.5},
    "quiet_star": {"prompt": f"Q: {QUESTION}\nA:", "max_tokens": 24, "seed": 7,
                   "temperature": 0.8, "method": "quiet_star",
                   "quiet_star": {"thought_tokens": 4}},
    "rebase": {"prompt": f"Q: {QUESTION}\nA:", "max_tokens": 96, "seed": 5, "temperature": 0.8,
               "method": "rebase",
               "rebase": {"width": 4, "max_step_tokens": 24, "max_depth": 4}},
    "quiet_star+rebase": {"prompt": f"Q: {QUESTION}\nA:", "max_tokens": 32, "seed": 11,
                          "temperature": 0.8, "method": "quiet_star+rebase",
                          "rebase": {"width": 2, "max_step_tokens": 8, "max_depth": 3},
                          "quiet_star": {"thought_tokens": 2}},
}  # fmt: skip
# Fields that differ between runs by nature (ids, clocks), not by behaviour.
VOLATILE = {"id", "request", "created", "latency_s", "elapsed_s", "ttft_s", "duration_s"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot(checkout: Path, log: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "server", "--port", str(port), "--dtype", "float32",
               "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                raise SystemExit(f"gateway exited {process.returncode}: see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"gateway not healthy in 900 s: see {log}")
            time.sleep(1)
        answers = {}
        for name, body in REQUESTS.items():  # one at a time: the same batches every run
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=900)
            response.raise_for_status()
            answers[name] = strip(response.json())
        return answers
    finally:
        process.terminate()
        process.wait(timeout=120)


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                found.append(f"{path}.{key}: only in {'new' if key in new else 'old'}")
            else:
                found += differences(old[key], new[key], f"{path}.{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [f"{path}: {old!r} != {new!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        found = differences(old, new)
        print("\n".join(found) if found else f"identical: {', '.join(old)}")
        raise SystemExit(1 if found else 0)
    checkout = args.checkout.resolve()
    answers = snapshot(checkout, args.out.with_suffix(".log"))
    args.out.write_text(json.dumps(answers, indent=1, sort_keys=True))
    print(f"{args.out}: {', '.join(answers)}")


if __name__ == "__main__":
    main()
