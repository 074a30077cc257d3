"""One scheduler for the engine work of every REBASE tree in the process.

Why: each tree is level-synchronous (a depth waits for its slowest node), but trees must not
wait for each other, the engine's KV cache must not be flooded with more sequences than it can
hold (preemption recomputes prefixes and wastes the cache), and a wide tree must not starve a
narrow one. Every tree hands its ready work (node expansions, PRM scoring calls) here; the
scheduler keeps at most `max_in_flight` jobs running and, whenever a slot frees, starts the
oldest waiting job of the tree that has the fewest jobs running (fair share across requests).

Jobs run in the caller's task: cancelling a request (client gone, timeout) cancels its jobs,
which aborts their engine requests, and withdraws the ones still queued.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Ticket:
    tree: str
    seq: int
    label: str
    granted: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ExpansionScheduler:
    """Bounded, fair admission of engine jobs from many trees."""

    def __init__(
        self, max_in_flight: int, on_queue_change: Callable[[str, int], None] | None = None
    ):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.max_in_flight = max_in_flight
        self._queues: dict[str, deque[_Ticket]] = {}
        self._running: dict[str, int] = {}
        self._in_flight = 0
        self._seq = itertools.count()
        self._on_queue_change = on_queue_change  # (label, jobs queued under that label)
        self._queued_by_label: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def run(self, tree: str, job: Callable[[], Awaitable[T]], label: str = "") -> T:
        """Wait for a slot (fairly), then run `job()` in this task and free the slot.
        `label` (e.g. the method) only groups the queue-depth reports."""
        ticket = _Ticket(tree, next(self._seq), label)
        self._queues.setdefault(tree, deque()).append(ticket)
        self._count(label, +1)
        self._dispatch()
        try:
            await ticket.granted
        except asyncio.CancelledError:
            if ticket.granted.done() and not ticket.granted.cancelled():
                self._release(ticket)  # granted just before the cancel arrived
            else:
                self._withdraw(ticket)
            raise
        try:
            return await job()
        finally:
            self._release(ticket)

    def _dispatch(self) -> None:
        while self._in_flight < self.max_in_flight:
            ticket = self._next_ticket()
            if ticket is None:
                break
            self._queues[ticket.tree].popleft()
            if not self._queues[ticket.tree]:
                del self._queues[ticket.tree]
            self._in_flight += 1
            self._running[ticket.tree] = self._running.get(ticket.tree, 0) + 1
            self._count(ticket.label, -1)
            ticket.granted.set_result(None)

    def _next_ticket(self) -> _Ticket | None:
        """The head of the queue whose tree runs fewest jobs; ties: the oldest job."""
        best: _Ticket | None = None
        best_key: tuple[int, int] | None = None
        for queue in self._queues.values():
            head = queue[0]
            key = (self._running.get(head.tree, 0), head.seq)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    def _release(self, ticket: _Ticket) -> None:
        self._in_flight -= 1
        remaining = self._running[ticket.tree] - 1
        if remaining:
            self._running[ticket.tree] = remaining
        else:
            del self._running[ticket.tree]
        self._dispatch()

    def _withdraw(self, ticket: _Ticket) -> None:
        queue = self._queues.get(ticket.tree)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._queues[ticket.tree]
            self._count(ticket.label, -1)

    def _count(self, label: str, change: int) -> None:
        count = self._queued_by_label.get(label, 0) + change
        self._queued_by_label[label] = count
        if self._on_queue_change is not None:
            self._on_queue_change(label, count)


class DirectScheduler:
    """The simple alternative: every tree submits its own calls at once, unbounded.

    Kept for measuring what the fair scheduler buys (`--rebase-scheduler direct`)."""

    in_flight = 0
    queued = 0

    async def run(self, tree: str, job: Callable[[], Awaitable[T]], label: str = "") -> T:
        return await job()
