#!/usr/bin/env bash
# README command 2: set everything up, then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
echo "test: ruff"; .venv/bin/ruff check edgevit tests tools
echo "test: mypy"; .venv/bin/mypy
echo "test: pytest"; .venv/bin/python -m pytest -q "$@"
