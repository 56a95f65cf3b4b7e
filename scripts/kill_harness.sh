#!/usr/bin/env bash
# Kill every example pipeline with SIGKILL at random moments, resume it,
# and compare its final bytes with an uninterrupted run (tests/it/kills.rs).
# CI runs 2 kills per pipeline; this runs KILN_KILLS (20 by default) and
# prints each kill's moment and phase and each pipeline's seed
# (KILN_KILL_SEED=S replays one).
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_KILLS="${KILN_KILLS:-20}"
cargo nextest run --no-fail-fast --no-capture kills:: 2>&1 | grep -E "kill|seed|PASS|FAIL|Summary|panicked"
