#!/usr/bin/env bash
# Reproduce docs/results.md: every method on the first 32 GSM8K test problems, SmolLM2-135M,
# this machine (2 CPU cores). Starts its own gateway on port 8077 and stops it afterwards.
#   loadtest/results_run.sh OUT_DIR [extra loadtest args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/results}"; shift || true
PORT=8077
.venv/bin/python -m server --port "$PORT" --log-level warning > "$OUT/gateway.log" 2>&1 &
GATEWAY=$!
trap 'kill $GATEWAY 2>/dev/null; wait $GATEWAY 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $GATEWAY || { echo "gateway died"; tail -20 "$OUT/gateway.log"; exit 1; }
  sleep 2
done
QS='{"thought_tokens": 4, "mixing_weight": '"${QS_W:-0.1}"'}'
RB='{"width": 3, "max_step_tokens": 48, "step_delimiter": "\n"}'
.venv/bin/python -m loadtest run --url "http://127.0.0.1:$PORT" \
  --data ../shared/data/gsm8k --split test --limit 32 \
  --max-tokens 96 --temperature 0.7 --sample-seed 0 --concurrency 8 --no-progress \
  --methods "baseline,quiet_star,rebase,quiet_star+rebase" \
  --method-params '{"quiet_star": {"quiet_star": '"$QS"'},
                    "rebase": {"rebase": '"$RB"'},
                    "quiet_star+rebase": {"rebase": '"$RB"', "quiet_star": {"thought_tokens": 4, "mixing_weight": '"${QS_W:-0.1}"', "think": "step_start"}}}' \
  --out "$OUT" "$@"
