"""The one load driver: closed loop (N requests in flight) or open loop (Poisson arrivals).

Why both shapes: a closed loop (N clients, each sends its next request when the last one is
done) measures capacity; an open loop (arrivals at a fixed mean rate, whatever is in flight)
measures latency under a given load, including queueing, which a closed loop hides. The driver
knows nothing about HTTP: it calls ``send(i)`` for every item ``i`` and keeps the results in
item order; :func:`run_bodies` is the common case of POSTing completion bodies.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loadtest.harness.client import CallResult, GatewayClient

R = TypeVar("R")


@dataclass
class Drive(Generic[R]):
    """One driven load: results in item order, and the wall time of the whole load."""

    wall_s: float
    results: list[R]


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process: the first at 0, then exponential gaps, mean
    1/rate. Seeded, so two runs (or two sides of a comparison) see the same schedule."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(count):
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


async def drive(
    count: int,
    send: Callable[[int], Awaitable[R]],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
) -> Drive[R]:
    """Call ``send(i)`` for i in 0..count-1: closed loop with ``concurrency`` in flight (items
    start in order), or, with ``rate``, open loop (``concurrency`` is then an optional cap)."""
    results: list[Any] = [None] * count
    start = time.perf_counter()
    if rate:
        sem = asyncio.Semaphore(concurrency) if concurrency else None

        async def released(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            if sem is None:
                results[i] = await send(i)
            else:
                async with sem:
                    results[i] = await send(i)

        arrivals = poisson_arrivals(count, rate, seed)
        await asyncio.gather(*(released(i, at) for i, at in enumerate(arrivals)))
    else:
        if not concurrency or concurrency < 1:
            raise ValueError("a closed loop needs a concurrency >= 1 (or give a rate)")
        queue = iter(range(count))

        async def worker() -> None:
            for i in queue:  # one shared iterator: each item is taken exactly once, in order
                results[i] = await send(i)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(count, 1)))))
    return Drive(time.perf_counter() - start, results)


async def run_bodies_async(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    stream: bool = False,
    timeout: float = 1800,
    seed: int = 0,
) -> Drive[CallResult]:
    async with GatewayClient(url, timeout=timeout) as client:
        call = client.complete if stream else client.post
        return await drive(
            len(bodies),
            lambda i: call(bodies[i]),
            concurrency=concurrency,
            rate=rate,
            seed=seed,
        )


def run_bodies(
    url: str, bodies: Sequence[dict[str, Any]], *, check: bool = True, **load: Any
) -> Drive[CallResult]:
    """POST every completion body and wait (``load``: the keywords of ``run_bodies_async``:
    concurrency, rate, stream, timeout, seed); ``check`` raises if any request failed."""
    done = asyncio.run(run_bodies_async(url, bodies, **load))
    failed = [r for r in done.results if r.error is not None]
    if check and failed:
        raise RuntimeError(f"{len(failed)} of {len(bodies)} requests failed: {failed[0].error}")
    return done
