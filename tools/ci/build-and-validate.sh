#!/usr/bin/env bash
# Build a recipe and validate it, the way a CI job should: the exit code is validate's
# (0: every gate passed; 1: a gate failed or a target regressed; 2: bad input or a tampered build).
#
#   tools/ci/build-and-validate.sh RECIPE [BUILD_DIR]
#
# Environment:
#   EDGEVIT          the edgevit command (default: .venv/bin/edgevit, else edgevit on PATH)
#   REPORT_DIR       where junit.xml, summary.md and report.html go (default: BUILD_DIR/../ci-reports)
#   BASELINE         a previous build's report.json: fail on a top-1 regression beyond TOLERANCE
#   TOLERANCE        top-1 points a target may lose against the baseline (default 0.5)
#   LATENCY_TOLERANCE  fraction p50 may grow against the baseline (default: latency not compared)
set -euo pipefail
recipe=${1:?usage: tools/ci/build-and-validate.sh RECIPE [BUILD_DIR]}
out=${2:-build/ci-$(basename "$recipe" .yaml)}
edgevit=${EDGEVIT:-$( [ -x .venv/bin/edgevit ] && echo .venv/bin/edgevit || echo edgevit )}
reports=${REPORT_DIR:-$(dirname "$out")/ci-reports}
mkdir -p "$reports"

# A failed gate (exit 1) is validate's to report; bad input (exit 2) stops here.
set +e
"$edgevit" build "$recipe" -o "$out" --quiet
built=$?
set -e
if [ "$built" -gt 1 ]; then
  exit "$built"
fi

args=("$out" --junit "$reports/junit.xml" --markdown "$reports/summary.md" --quiet)
if [ -n "${BASELINE:-}" ]; then
  args+=(--baseline "$BASELINE" --tolerance "${TOLERANCE:-0.5}")
  if [ -n "${LATENCY_TOLERANCE:-}" ]; then
    args+=(--latency-tolerance "$LATENCY_TOLERANCE")
  fi
fi
set +e
"$edgevit" validate "${args[@]}"
status=$?
set -e
cp "$out/report.html" "$out/report.json" "$reports/" 2>/dev/null || true
cat "$reports/summary.md" 2>/dev/null || true
exit "$status"
