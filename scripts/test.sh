#!/usr/bin/env bash
# Sets up and runs every check: formatting, clippy, the Rust test suite, and
# the compatibility tests against the real Python `datasets`, `tokenizers`,
# pyarrow, DuckDB, onnxruntime and a NumPy reference of mixing; last, a check
# without the `cuda` feature.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo nextest run --no-fail-fast
# The integration tests built target/debug/kiln; `cargo build --bin kiln`
# here would build DataFusion a second time (dev-dependencies unify other
# features of `digest`) for the same program.
test -x "${CARGO_TARGET_DIR:-$PWD/target}/debug/kiln"
KILN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kiln" .venv/bin/python -m pytest -q tests/python
# kiln without the `cuda` feature (CPU-only ONNX Runtime and trainer) still
# compiles, lint-clean: a check, not a build, since without burn's CUDA
# backend its dependencies' features differ and a build would compile them
# all again.
cargo clippy -q --no-default-features --bin kiln -- -D warnings
