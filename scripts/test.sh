#!/usr/bin/env bash
# Run lint and the test suite. Extra arguments go to pytest (default: `-m "not slow"`).
#
# The end-to-end tests start one real gateway (uvicorn + vLLM on a tiny random Llama) per
# session; the observability test also needs a real Prometheus server, installed here from
# Debian's `prometheus` package when we are root and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${THINKSCALE_VENV:-.venv}"

if ! command -v prometheus >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian's prometheus for the scrape test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
      || echo "test: could not install prometheus; the scrape test will be skipped"
  else
    echo "test: prometheus not installed; the scrape test will be skipped"
  fi
fi

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/hadolint" Dockerfile

if [[ $# -eq 0 ]]; then
  set -- -m "not slow"
fi
exec "$VENV/bin/python" -m pytest "$@"
