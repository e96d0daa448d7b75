#!/usr/bin/env bash
# Build the fuzz targets with libFuzzer's coverage instrumentation and run each for a
# bounded time. Not part of the test command; docs/reliability.md says what was run.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 300 s; config edge decision route)
#
# Corpora grow in fuzz/corpus/<target> (kept between runs, not in git), seeded from
# fuzz/seeds/<target>, the examples and Istio's fixtures. A crash lands in
# fuzz/artifacts/<target>/; once fixed, copy it to fuzz/regressions/<target>/ so that
# tests/fuzz_regressions.rs replays it in every test run.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config edge decision route)
host="$(rustc -vV | sed -n 's/^host: //p')"

# cargo-fuzz's flags, without a sanitizer: the workspace denies `unsafe`, so what is
# looked for is panics, aborts, hangs and broken invariants. `--target` keeps the flags
# off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Coverflow-checks"
cargo build --release --target "$host" --bins

seed() {
    local target="$1" dir="corpus/$1"
    mkdir -p "$dir" "artifacts/$target"
    [ -d "seeds/$target" ] && cp -n seeds/"$target"/* "$dir"/ 2>/dev/null || true
    [ -d "regressions/$target" ] && cp -n regressions/"$target"/* "$dir"/ 2>/dev/null || true
    if [ "$target" = config ]; then
        find ../examples ../tests/data ../../shared/testdata/istio -name '*.yaml' 2>/dev/null |
            while read -r f; do cp -n "$f" "$dir/$(echo "$f" | sha1sum | cut -c1-16).yaml"; done
    fi
}

for target in "${targets[@]}"; do
    seed "$target"
    echo "== $target: ${seconds}s"
    started=$(date +%s)
    status=0
    "target/$host/release/$target" "corpus/$target" \
        -max_total_time="$seconds" -artifact_prefix="artifacts/$target/" \
        -rss_limit_mb=4096 -timeout=30 -max_len=8192 -print_final_stats=1 \
        2> "artifacts/$target.log" || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "artifacts/$target.log" || true
    echo "   corpus: $(ls "corpus/$target" | wc -l) inputs, ran $(( $(date +%s) - started ))s, exit $status"
    [ "$status" -eq 0 ] || { tail -40 "artifacts/$target.log"; exit "$status"; }
done
