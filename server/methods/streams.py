"""Merge several async streams into one, cancelling all of them if the consumer stops.

Why not `asyncio.gather`: choices must stream as they are produced (SSE), interleaved, and a
client disconnect must cancel every producer so vLLM aborts their engine requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Yield items from all `streams` as they arrive; re-raise the first producer error."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except BaseException as exc:
            await queue.put(exc)
        finally:
            await queue.put(_DONE)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
