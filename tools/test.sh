#!/usr/bin/env bash
# README command 2: set everything up, then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# The profiling tests start a real OpenSSH server on 127.0.0.1 (Debian's openssh-server).
if [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing openssh-server for the profiling tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null; }
fi
# The report test renders report.html in headless Chromium (Debian's chromium).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium for the report.html test"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
fi
echo "test: ruff"; .venv/bin/ruff check edgevit tests tools
echo "test: mypy"; .venv/bin/mypy
echo "test: pytest"; .venv/bin/python -m pytest -q --durations=15 "$@"
