"""Coherence of Quiet-STaR output vs the mixing weight, against a running gateway.

Greedy decoding of the first 4 GSM8K test questions, baseline vs quiet_star (t = 4) at several
mixing weights; prints how much of the baseline text each weight keeps before diverging and a
sample. Used to pick the default `mixing_weight` for models never trained to think.

    python -m loadtest.benchmarks.mixing_weight_check URL ../shared/data/gsm8k/test.jsonl
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

WEIGHTS = (0.0, 0.1, 0.3, 0.5, 1.0)


def complete(url: str, question: str, weight: float | None) -> str:
    body: dict = {
        "prompt": f"Q: {question}\nA: Let's think step by step.\n",
        "max_tokens": 40,
        "temperature": 0,
    }
    if weight is not None:
        body |= {
            "method": "quiet_star",
            "quiet_star": {"thought_tokens": 4, "mixing_weight": weight},
        }
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=900)
    return response.json()["choices"][0]["text"]


def shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def main(url: str, data: str) -> None:
    with open(data) as f:
        questions = [json.loads(line)["question"] for line in f][:4]
    jobs = [(i, w) for w in (None, *WEIGHTS) for i in range(len(questions))]
    with ThreadPoolExecutor(8) as pool:
        texts = dict(
            zip(jobs, pool.map(lambda j: complete(url, questions[j[0]], j[1]), jobs), strict=True)
        )
    print("| mixing weight | baseline text kept before divergence (mean) | sample (question 0) |")
    print("|---|---|---|")
    for w in WEIGHTS:
        kept = [
            shared_prefix(texts[(i, None)], texts[(i, w)]) / max(1, len(texts[(i, None)]))
            for i in range(len(questions))
        ]
        sample = texts[(0, w)][:80].replace("\n", "\\n")
        print(f"| {w} | {sum(kept) / len(kept):.2f} | `{sample}` |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
