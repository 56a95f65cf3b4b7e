#!/usr/bin/env bash
# Fuzz kiln's readers and decoders: build the targets of fuzz/ (cargo-fuzz,
# libFuzzer; no sanitizer, so stable Rust builds them; with debug assertions
# and overflow checks) and run each for a set time, JOBS at once.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    # default: 1200 s, all
#
# JOBS targets at once (default: the cores); RSS_MB: libFuzzer's memory
# limit (default 2560; the csv and jsonl harnesses grow about 1 to 2 KB an
# execution, building a pipeline each time, so their long runs need more).
#
# Each target starts from its corpus (fuzz/corpus/TARGET, committed) and the
# seeds scripts/fuzz_seeds.py writes (fuzz/seeds/TARGET); new inputs go to
# fuzz/work/TARGET, and at the end the corpus is minimised (libFuzzer's
# -set_cover_merge: the fewest files that keep every feature) back into
# fuzz/corpus/TARGET. A crash or hang stops its target and is left in
# fuzz/artifacts/TARGET/; its input goes to fuzz/regressions/TARGET/ under a
# name that says what it pins, once fixed. The summary
# (fuzz/work/summary.txt) has a line a target: seconds, execs, execs/s,
# coverage (edges, features), corpus size, outcome. Panics that kiln
# catches on purpose (a decoder's, made a reject) are printed in the
# target's log (fuzz/work/TARGET.log), not taken for crashes.
# tests/it/fuzz.rs replays the corpora and the regressions in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1200}
shift || true
all=(image audio tar jsonl csv parquet pipeline translate loader)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs=${JOBS:-$(nproc)}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ -d fuzz/seeds ] || .venv/bin/python scripts/fuzz_seeds.py fuzz/seeds
(cd fuzz && cargo fuzz build --sanitizer none --debug-assertions)
bin=fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p fuzz/work
export TMPDIR=${TMPDIR:-/dev/shm}

# Absolute paths: the pipeline target moves its working directory.
run_one() {
    t=$1
    secs=$2
    bin=$3
    f=$PWD/fuzz
    # Media files are larger than text records; small ones reach the same
    # paths, and keep the committed corpora small.
    case $t in image | audio | tar | parquet | loader) max_len=16384 ;; *) max_len=4096 ;; esac
    mkdir -p "$f/work/$t" "$f/artifacts/$t" "$f/corpus/$t" "$f/seeds/$t"
    outcome=ok
    start=$SECONDS
    "$bin/$t" -max_total_time="$secs" -max_len="$max_len" -timeout=20 -rss_limit_mb="${RSS_MB:-2560}" \
        -print_final_stats=1 -artifact_prefix="$f/artifacts/$t/" \
        "$f/work/$t" "$f/corpus/$t" "$f/seeds/$t" >"$f/work/$t.log" 2>&1 || outcome=FOUND
    ran=$((SECONDS - start))
    # Minimise what it found into the committed corpus.
    rm -rf "$f/work/$t.merged" && mkdir -p "$f/work/$t.merged"
    "$bin/$t" -set_cover_merge=1 -max_len="$max_len" -timeout=20 -rss_limit_mb="${RSS_MB:-2560}" "$f/work/$t.merged" \
        "$f/corpus/$t" "$f/seeds/$t" "$f/work/$t" >"$f/work/$t.merge.log" 2>&1 &&
        rm -rf "$f/corpus/$t" && mv "$f/work/$t.merged" "$f/corpus/$t"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$f/work/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$f/work/$t.log")
    cov=$(grep -E '^#[0-9]+' "$f/work/$t.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    printf '%-10s %6ss  execs %-10s %6s/s  %-22s corpus %5s  %s\n' "$t" "$ran" "${execs:-?}" \
        "${rate:-?}" "$cov" "$(ls "$f/corpus/$t" | wc -l)" "$outcome"
}
export -f run_one
# summary.txt keeps every run's lines; the exit status is this run's.
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c "run_one {} $secs $bin" |
    tee fuzz/work/this_run.txt
cat fuzz/work/this_run.txt >>fuzz/work/summary.txt
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
! grep -q FOUND fuzz/work/this_run.txt
