"""Benchmarks of the gateway itself (not the GSM8K replay tool, which lives in ``loadtest``).

Each benchmark is one module runnable as ``python -m loadtest.benchmarks.<name>``; it starts the
servers it compares itself (one at a time: the reference machine has two cores), alternates the
compared configurations so background noise hits all of them alike, prints a Markdown table and
writes its raw numbers as JSON. Results and exact commands: ``docs/benchmarks.md``.

Why ``benchmarks`` and not ``bench``: ``loadtest/bench.py`` (the ``vllm bench serve`` dataset
exporter) already owns the module name ``loadtest.bench``, and a ``loadtest/bench/`` package
would shadow it.
"""
