#!/usr/bin/env bash
# Sets up and runs every check: formatting, clippy, the Rust test suite, and
# the compatibility tests against the real Python `datasets`, `tokenizers`,
# pyarrow, DuckDB, onnxruntime and a NumPy reference of mixing; last, a build
# without the `cuda` feature.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo nextest run --no-fail-fast
cargo build --bin kiln
KILN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kiln" .venv/bin/python -m pytest -q tests/python
# kiln without the `cuda` feature (CPU-only ONNX Runtime) still builds; last,
# since it replaces target/debug/kiln.
cargo build -q --no-default-features --bin kiln
