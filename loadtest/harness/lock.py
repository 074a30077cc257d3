"""One machine-wide lock for measurements: every benchmark and every ``loadtest run`` take it.

Why: on a 2-core machine two measurements running at once each measure the other. The lock is
an ``fcntl.flock`` on one file (``$THINKSCALE_BENCH_LOCK``, default
``/tmp/thinkscale-bench.lock``); the kernel drops it when the holder exits, however it exits.
By default a second taker fails at once with a message naming the holder; ``wait=True`` queues.
Re-entrant within one process (a benchmark that runs ``loadtest run`` in-process holds it once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_LOCK = "/tmp/thinkscale-bench.lock"
_held: set[Path] = set()  # locks this process holds (flock would block on a second open)


class LockHeld(RuntimeError):
    """Another measurement holds the lock."""


def lock_path() -> Path:
    return Path(os.environ.get("THINKSCALE_BENCH_LOCK") or DEFAULT_LOCK)


@contextlib.contextmanager
def measurement_lock(what: str, *, wait: bool = False, path: Path | None = None) -> Iterator[Path]:
    """Hold the lock for the duration of the ``with`` block.

    ``what`` is written into the lock file so a refused taker can say who holds it."""
    path = (path or lock_path()).absolute()
    if path in _held:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            if not wait:
                raise LockHeld(
                    f"another measurement holds {path} ({holder}); wait for it, or pass "
                    "--wait-lock to queue behind it"
                ) from None
            print(f"waiting for {path} ({holder}) ...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}: {what}\n")
        f.flush()
        _held.add(path)
        try:
            yield path
        finally:
            _held.discard(path)
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
