"""One scheduler for the engine work of every REBASE tree in the process.

Why: each tree is level-synchronous (a depth waits for its slowest node), but trees must not
wait for each other, the engine's KV cache must not be flooded with more sequences than it can
hold (preemption recomputes prefixes and wastes the cache), and one big request must not starve
the others. Every tree hands its ready work (node expansions, PRM scoring calls) here under a
fairness key, the id of its HTTP request (all trees of a request share it); the scheduler keeps
at most `max_in_flight` jobs running and, whenever a slot frees, starts the oldest waiting job
of the key that has the fewest jobs running (fair share across requests).

Jobs run in the caller's task: cancelling a request (client gone, timeout) cancels its jobs,
which aborts their engine requests, and withdraws the ones still queued.

Slot accounting (docs/architecture.md): a slot is taken only by `_grant`, which marks the
ticket granted, and given back only by the task that holds the ticket, once. A cancelled
waiter's future is cancelled at once, but its task runs its cleanup only on a later loop turn;
a slot freed in between must skip such a ticket, never hand it the slot (issue 9: the grant
raised InvalidStateError and the slot was lost for good).
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
    key: str
    seq: int
    label: str
    # Resolved by the scheduler when the job may start; cancelled (by asyncio) when the
    # waiting task is cancelled.
    wake: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    holds_slot: bool = False  # set by `_grant`, cleared by `_release`: the one source of truth


class ExpansionScheduler:
    """Bounded, fair admission of engine jobs from many requests."""

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

    async def run(self, key: str, job: Callable[[], Awaitable[T]], label: str = "") -> T:
        """Wait for a slot (fairly among keys), then run `job()` in this task and free the slot.
        `key` is the fairness key (the HTTP request id); `label` (e.g. the method) only groups
        the queue-depth reports."""
        ticket = _Ticket(key, next(self._seq), label)
        self._queues.setdefault(key, deque()).append(ticket)
        self._count(label, +1)
        self._dispatch()
        try:
            await ticket.wake
        except BaseException:
            # Cancelled while queued, or granted just before the cancel arrived.
            if ticket.holds_slot:
                self._release(ticket)
            else:
                self._withdraw(ticket)
            raise
        try:
            return await job()
        finally:
            self._release(ticket)

    def _dispatch(self) -> None:
        """Fill free slots from the queues; drop tickets whose waiter is already gone."""
        while self._in_flight < self.max_in_flight:
            ticket = self._next_ticket()
            if ticket is None:
                break
            self._pop(ticket)
            if ticket.wake.done():  # cancelled: its task has not run its cleanup yet
                continue
            self._grant(ticket)

    def _next_ticket(self) -> _Ticket | None:
        """The head of the queue whose key runs fewest jobs; ties: the oldest job."""
        best: _Ticket | None = None
        best_rank: tuple[int, int] | None = None
        for queue in self._queues.values():
            head = queue[0]
            rank = (self._running.get(head.key, 0), head.seq)
            if best_rank is None or rank < best_rank:
                best, best_rank = head, rank
        return best

    def _pop(self, ticket: _Ticket) -> None:
        queue = self._queues[ticket.key]
        queue.popleft()
        if not queue:
            del self._queues[ticket.key]
        self._count(ticket.label, -1)

    def _grant(self, ticket: _Ticket) -> None:
        ticket.holds_slot = True
        self._in_flight += 1
        self._running[ticket.key] = self._running.get(ticket.key, 0) + 1
        ticket.wake.set_result(None)

    def _release(self, ticket: _Ticket) -> None:
        if not ticket.holds_slot:  # never give back a slot twice
            return
        ticket.holds_slot = False
        self._in_flight -= 1
        remaining = self._running[ticket.key] - 1
        if remaining:
            self._running[ticket.key] = remaining
        else:
            del self._running[ticket.key]
        self._dispatch()

    def _withdraw(self, ticket: _Ticket) -> None:
        """Take a cancelled waiter out of its queue, unless `_dispatch` already dropped it."""
        queue = self._queues.get(ticket.key)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._queues[ticket.key]
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

    async def run(self, key: str, job: Callable[[], Awaitable[T]], label: str = "") -> T:
        return await job()
