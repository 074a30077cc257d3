"""`python -m server`: start the gateway (settings from flags and THINKSCALE_* variables).

The `__main__` guard matters: vLLM's CPU engine starts its core process with `spawn`, which
re-imports the main module.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from server.app import create_app
from server.config import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
