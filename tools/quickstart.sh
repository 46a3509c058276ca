#!/usr/bin/env bash
# README command 1: set everything up, then run the default build end to end (ONNX Runtime) and
# the same model on OpenVINO. Exit code: 0 when every gate passes, 1 on a failed gate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/edgevit build digits-ort-int8 "$@"
.venv/bin/edgevit build x86-openvino-int8 "$@"
