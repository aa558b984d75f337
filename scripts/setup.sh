#!/usr/bin/env bash
# Create .venv (if needed) and install awb-dagster with its test extras.
# torch/torchvision are installed first, pinned, so no other step pulls a different torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[test]"
# carvekit (U^2-Net architecture of the foreground prior) without its dependencies: they would pull
# opencv-python (clashing with opencv-python-headless), fastapi and the `typing` backport; the
# architecture module needs torch alone.
.venv/bin/python -m pip install --quiet --no-deps "carvekit==4.1.2"
