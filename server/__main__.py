"""`python -m server`: start the gateway (settings from flags and THINKSCALE_* variables).

The `__main__` guard matters: vLLM's CPU engine starts its core process with `spawn`, which
re-imports the main module.
"""

from __future__ import annotations

import sys

import uvicorn

from server.app import create_app
from server.config import Settings
from server.logging_setup import configure_logging


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # log_config=None: uvicorn's loggers propagate to ours (same format, request ids).
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None
    )


if __name__ == "__main__":
    main()
