"""The one benchmark harness every benchmark (and the GSM8K replay) is built on.

Why one library: benchmarks compare two or more *sides* (servers, schedulers, implementations)
on a shared 2-core machine, and every comparison needs the same five things done the same way:

* ``servers``: start/stop the gateway or plain ``vllm serve`` (the test fixtures use it too);
* ``driver``: one load driver, closed loop (N in flight) or open loop (Poisson arrivals), over
  the one HTTP ``client`` of the gateway, on GSM8K problems from ``data``;
* ``rounds``: alternating rounds, A B B A A B ..., at least 3 by default;
* ``lock``: a file lock that every benchmark and ``loadtest run`` take, so runs never overlap;
* ``results``: medians with min-max spread and a JSON result file that says exactly how it was
  made (command, git commit, package versions, machine).

A benchmark script then only says *what* is compared (see ``loadtest/benchmarks``).

Why the bottom of ``loadtest``: the benchmarks, the GSM8K replay and the test fixtures all
stand on it, so it imports nothing of ``loadtest`` outside itself (only ``server`` for the
launcher's defaults); docs/architecture.md lists the layers, import-linter enforces them.
"""
