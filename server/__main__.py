"""`python -m server`: start the gateway (settings from flags and THINKSCALE_* variables).

The `__main__` guard matters: vLLM's CPU engine starts its core process with `spawn`, which
re-imports the main module.
"""

from __future__ import annotations

import sys

from server.app.exposure import EXIT_INSECURE, insecure_exposure
from server.app.factory import create_app
from server.app.logging_setup import configure_logging
from server.app.serve import run
from server.core.config import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    problem = insecure_exposure(settings)
    if problem is not None:
        print(f"thinkscale: {problem}", file=sys.stderr)
        sys.exit(EXIT_INSECURE)
    try:
        app = create_app(settings)
    except ValueError as exc:  # a setting this machine cannot honour
        print(f"thinkscale: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(app, settings.host, settings.port, settings.log_level))


if __name__ == "__main__":
    main()
