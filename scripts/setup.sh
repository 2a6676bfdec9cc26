#!/usr/bin/env bash
# Creates .venv with everything fpr-sweep needs; idempotent and fast when nothing changed.
# torch is installed first, pinned, so pip never resolves a bare `torch` to a multi-GB CUDA build:
#   - a machine with an NVIDIA driver gets PyPI's default (CUDA) build of torch==$TORCH_VERSION;
#   - a CPU machine gets the same pin; where a CPU wheel is on pip's find-links (as here) pip takes it.
#     Elsewhere, set TORCH_INDEX_URL to PyTorch's CPU wheel index to avoid the CUDA download.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
VENV=.venv
stamp="$VENV/.fpr-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION" >&2
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    "${pip[@]}" "torch==$TORCH_VERSION"
  fi
fi
echo "setup: installing fpr-sweep and its dependencies into $VENV" >&2
"${pip[@]}" -e ".[dev]"
rm -f "$VENV"/.fpr-setup-*
touch "$stamp"
