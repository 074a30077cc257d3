"""Merge several async streams into one, cancelling all of them if the consumer stops.

Why not `asyncio.gather`: choices must stream as they are produced (SSE), interleaved, and a
client disconnect must cancel every producer so vLLM aborts their engine requests.

Every stream is closed before the merge is done, however it ends: an `async for` left early
does not close its iterator, and a generator left open finishes (aborts its engine request,
charges its usage) only when the garbage collector gets to it, after the usage was read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def gather_cancelling(awaitables: list[Awaitable[T]]) -> list[T]:
    """`asyncio.gather`, except that the first failure cancels the others and waits for them
    before it is re-raised: a failed request leaves no engine call running, to be charged
    after its usage was read."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Yield items from all `streams` as they arrive; re-raise the first producer error."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as stream:
            async for item in stream:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async with aclosing(stream):
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
