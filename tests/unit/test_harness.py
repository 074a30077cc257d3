"""The benchmark harness (loadtest/harness) without servers: rounds, lock, driver, results."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadtest.harness.driver import drive
from loadtest.harness.lock import LockHeld, measurement_lock
from loadtest.harness.results import by_side, provenance, spread, write_result
from loadtest.harness.rounds import run_rounds, schedule


def test_rounds_alternate_a_b_b_a_with_three_by_default() -> None:
    assert schedule(["A", "B"]) == [(1, "A"), (1, "B"), (2, "B"), (2, "A"), (3, "A"), (3, "B")]
    seen = run_rounds(["x", "y", "z"], lambda r, s: (r, s), rounds=2)
    assert [s for _, s in seen] == ["x", "y", "z", "z", "y", "x"]
    with pytest.raises(ValueError):
        schedule(["A"], 0)


def test_spread_is_median_with_min_and_max() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    sessions = [{"side": "a", "v": 1}, {"side": "b", "v": 5}, {"side": "a", "v": 3}]
    assert by_side(sessions, "v") == {
        "a": {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2},
        "b": {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1},
    }


def test_result_file_says_how_it_was_made(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_result(out, "demo", {"sessions": [1]})
    data = json.loads(out.read_text())
    assert data["benchmark"] == "demo" and data["sessions"] == [1] and data["partial"] is False
    p = data["provenance"]
    assert len(p["git_commit"]) == 40 and p["command"].startswith("python -m ")
    assert p["machine"]["cpus"] >= 1 and "numpy" in p["packages"]
    assert provenance(["/x/y.py", "--a"])["command"] == "python -m /x/y.py --a"


def test_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path: Path) -> None:
    path = tmp_path / "bench.lock"
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from loadtest.harness.lock import measurement_lock
        with measurement_lock("holder benchmark", path=Path({str(path)!r})):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match="holder benchmark"), measurement_lock("me", path=path):
            pass
    finally:
        proc.communicate("", timeout=30)
    with measurement_lock("me", path=path), measurement_lock("nested", path=path):
        assert "nested" not in path.read_text()  # re-entry does not re-lock or rewrite
    assert path.read_text() == ""  # released and cleared


def test_closed_loop_bounds_in_flight_and_keeps_item_order() -> None:
    in_flight = peak = 0

    async def send(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01 * (5 - i % 5))
        in_flight -= 1
        return i * i

    done = asyncio.run(drive(10, send, concurrency=3))
    assert done.results == [i * i for i in range(10)] and peak == 3 and done.wall_s > 0


def test_open_loop_does_not_wait_for_completions() -> None:
    in_flight = peak = 0

    async def send(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.3)
        in_flight -= 1
        return i

    done = asyncio.run(drive(6, send, rate=100.0))
    assert done.results == list(range(6)) and peak > 3
    with pytest.raises(ValueError):
        asyncio.run(drive(1, send))
