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
a slot freed in between must skip such a ticket, never hand it the slot (once, the grant
raised InvalidStateError and the slot was lost for good).

`PriorityScheduler` (below) keeps this accounting and changes only *which* ticket goes next and
*whether* it may start now: latency-aware order instead of processor sharing, and admission by
the KV-cache blocks a job will need (docs/architecture.md, "The scheduler").
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class KvCost:
    """KV-cache blocks an engine job will hold at its peak.

    `shared_blocks` (the prompt and path of the node being expanded) are counted once for all
    running jobs of one `group` (the siblings of one parent share those blocks through vLLM's
    prefix cache); `own_blocks` (the new step, plus a partly filled boundary block) per job."""

    group: object
    shared_blocks: int
    own_blocks: int


@dataclass(eq=False)
class _Ticket:
    key: str
    seq: int
    label: str
    rank: tuple = ()  # PriorityScheduler: smaller goes first
    kv: KvCost | None = None
    deferred: bool = False  # held back for KV room at least once (counted once)
    # Resolved by the scheduler when the job may start; cancelled (by asyncio) when the
    # waiting task is cancelled.
    wake: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    holds_slot: bool = False  # set by `_grant`, cleared by `_release`: the one source of truth


class FairExpansionScheduler:
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

    async def run(
        self,
        key: str,
        job: Callable[[], Awaitable[T]],
        label: str = "",
        *,
        rank: tuple = (),
        kv: KvCost | None = None,
    ) -> T:
        """Wait for a slot (fairly among keys), then run `job()` in this task and free the slot.
        `key` is the fairness key (the HTTP request id); `label` (e.g. the method) only groups
        the queue-depth reports. `rank` and `kv` are read by `PriorityScheduler` only."""
        ticket = _Ticket(key, next(self._seq), label, rank, kv)
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
            if ticket.wake.done():  # cancelled: its task has not run its cleanup yet
                self._pop(ticket)
                continue
            if not self._admits(ticket):
                break
            self._pop(ticket)
            self._grant(ticket)

    def _admits(self, ticket: _Ticket) -> bool:
        """Whether the chosen ticket may start now (a slot is free); always here."""
        return True

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
        if queue[0] is ticket:
            queue.popleft()
        else:
            queue.remove(ticket)
        if not queue:
            del self._queues[ticket.key]
        self._count(ticket.label, -1)

    def _grant(self, ticket: _Ticket) -> None:
        ticket.holds_slot = True
        self._in_flight += 1
        self._running[ticket.key] = self._running.get(ticket.key, 0) + 1
        self._on_grant(ticket)
        ticket.wake.set_result(None)

    def _release(self, ticket: _Ticket) -> None:
        if not ticket.holds_slot:  # never give back a slot twice
            return
        ticket.holds_slot = False
        self._in_flight -= 1
        self._on_release(ticket)
        remaining = self._running[ticket.key] - 1
        if remaining:
            self._running[ticket.key] = remaining
        else:
            del self._running[ticket.key]
        self._dispatch()

    def _on_grant(self, ticket: _Ticket) -> None:
        """Extra bookkeeping of a subclass when a slot is taken."""

    def _on_release(self, ticket: _Ticket) -> None:
        """Extra bookkeeping of a subclass when a slot is given back."""

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


class PriorityScheduler(FairExpansionScheduler):
    """Latency-aware order and KV-aware admission over the same slot accounting.

    Order: processor sharing (`FairExpansionScheduler`) makes every request of a burst finish near
    the end of the burst. Here the next job is the one of smallest `rank` (the caller's: the
    request's age first, then the deepest level, so stragglers of an old request's almost
    finished level go before a young request's first level), which lets old requests finish
    first. Fairness stays as a *bound*: a request with queued work and fewer than `min_share`
    jobs running goes before any rank, so no request is starved however old the others are.

    Admission: a job starts only if the KV blocks it will need fit next to what runs already
    (`KvCost`: siblings share their parent's prefix), taken against the larger of our own
    reservation and the engine's measured usage (`kv_usage`, a fraction, or None when unknown),
    under `kv_watermark` of the `kv_blocks` the engine has. A job that does not fit waits (and
    so do the ones behind it, so a wide job is not overtaken forever); with nothing running it
    starts anyway, so an oversized job cannot wedge the queue. This keeps wide trees from
    driving vLLM into preemption (recompute), which wastes both the batch and the prefix cache.
    """

    def __init__(
        self,
        max_in_flight: int,
        on_queue_change: Callable[[str, int], None] | None = None,
        *,
        min_share: int = 1,
        kv_blocks: int | None = None,
        kv_usage: Callable[[], float | None] | None = None,
        kv_watermark: float = 0.95,
        on_defer: Callable[[], None] | None = None,
    ):
        super().__init__(max_in_flight, on_queue_change)
        self.min_share = min_share
        self.kv_blocks = kv_blocks
        self._kv_usage = kv_usage
        self.kv_watermark = kv_watermark
        self._groups: dict[object, int] = {}  # running jobs per KvCost.group
        self.reserved_blocks = 0
        self.deferred = 0  # jobs held back for KV room at least once
        self._on_defer = on_defer

    def _next_ticket(self) -> _Ticket | None:
        """Smallest (not yet at its fair share?, rank, submission order) over all queued jobs."""
        best: _Ticket | None = None
        best_rank: tuple | None = None
        for queue in self._queues.values():
            starved = self._running.get(queue[0].key, 0) < self.min_share
            for ticket in queue:
                rank = (not starved, ticket.rank, ticket.seq)
                if best_rank is None or rank < best_rank:
                    best, best_rank = ticket, rank
        return best

    def _cost(self, ticket: _Ticket) -> int:
        kv = ticket.kv
        if kv is None:
            return 0
        shared = 0 if self._groups.get(kv.group) else kv.shared_blocks
        return shared + kv.own_blocks

    def _admits(self, ticket: _Ticket) -> bool:
        if self.kv_blocks is None or ticket.kv is None or self._in_flight == 0:
            return True
        used = self.reserved_blocks
        measured = self._kv_usage() if self._kv_usage is not None else None
        if measured is not None:
            used = max(used, int(measured * self.kv_blocks))
        if used + self._cost(ticket) <= self.kv_watermark * self.kv_blocks:
            return True
        if not ticket.deferred:
            ticket.deferred = True
            self.deferred += 1
            if self._on_defer is not None:
                self._on_defer()
        return False

    def _on_grant(self, ticket: _Ticket) -> None:
        kv = ticket.kv
        if kv is None:
            return
        self.reserved_blocks += self._cost(ticket)
        self._groups[kv.group] = self._groups.get(kv.group, 0) + 1

    def _on_release(self, ticket: _Ticket) -> None:
        kv = ticket.kv
        if kv is None:
            return
        self.reserved_blocks -= kv.own_blocks
        left = self._groups[kv.group] - 1
        if left:
            self._groups[kv.group] = left
        else:
            del self._groups[kv.group]
            self.reserved_blocks -= kv.shared_blocks


class DirectScheduler:
    """The simple alternative: every tree submits its own calls at once, unbounded.

    Kept for measuring what the fair scheduler buys (`--rebase-scheduler direct`)."""

    in_flight = 0
    queued = 0

    async def run(
        self,
        key: str,
        job: Callable[[], Awaitable[T]],
        label: str = "",
        *,
        rank: tuple = (),
        kv: KvCost | None = None,
    ) -> T:
        return await job()
