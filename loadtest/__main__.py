"""`python -m loadtest`: the replay's commands (loadtest/cli.py) and ``docs`` (loadtest/docs.py).

Why ``docs`` is dispatched here and not in cli.py: ``docs`` renders every benchmark's tables, so
it sits above the benchmarks, while the replay's command line sits below them (``results_run``
runs it in-process); only this top module may use both (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from loadtest import cli, docs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["docs"]:  # its own small parser
        return docs.main(argv[1:])
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
