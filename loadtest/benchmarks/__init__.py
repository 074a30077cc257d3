"""Benchmarks of the gateway itself (not the GSM8K replay tool, which lives in ``loadtest``).

Each benchmark is one module runnable as ``python -m loadtest.benchmarks.<name>``, a short
script of *what* it compares on the shared harness (``loadtest.harness``: servers, load driver,
alternating rounds, the measurement lock, result files with provenance). Each has a
``tables(payload)`` function that ``python -m loadtest docs`` uses to put its tables into
docs/benchmarks.md from the committed result JSON under docs/data/.

Why ``benchmarks`` and not ``bench``: ``loadtest/bench.py`` (the ``vllm bench serve`` dataset
exporter) already owns the module name ``loadtest.bench``, and a ``loadtest/bench/`` package
would shadow it.
"""
