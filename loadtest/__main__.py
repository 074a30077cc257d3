"""`python -m loadtest`: see loadtest/cli.py and docs/loadtest.md."""

from loadtest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
