#!/usr/bin/env bash
# Fuzzes the PDF, HTML and Markdown loaders and the upload form with
# libFuzzer (cargo fuzz, nightly toolchain, AddressSanitizer):
#
#   scripts/fuzz.sh [SECONDS per target, default 600] [TARGET...]
#
# Seeds come from `rag_ingest::fuzzing::seeds` and `rag_api::fuzzing::seeds` plus the inputs kept in
# fuzz/regressions/. The corpus grows in target/fuzz/corpus/<target>; a
# crash, timeout or allocation over the limit is written to
# target/fuzz/artifacts/<target>/ and stops that target. Copy it into
# fuzz/regressions/<target>/ once fixed: `cargo test -p rag-ingest --test
# fuzz_regressions` replays it from then on. Summary lines go to
# target/fuzz/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pdf html markdown docx multipart)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cargo run --release --locked -q -p rag-ingest --example fuzz_seeds -- target/fuzz/seeds
cargo run --release --locked -q -p rag-api --example form_fuzz_seeds -- target/fuzz/seeds
mkdir -p target/fuzz
for t in "${targets[@]}"; do
    mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t" "fuzz/regressions/$t"
    log="target/fuzz/$t.log"
    status=0
    cargo +nightly fuzz run --fuzz-dir fuzz --target-dir target/fuzz/build "$t" \
        "target/fuzz/corpus/$t" "target/fuzz/seeds/$t" "fuzz/regressions/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="target/fuzz/artifacts/$t/" \
        >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    corpus=$(ls "target/fuzz/corpus/$t" | wc -l)
    line="$t: ${seconds}s, exit $status, $runs runs, coverage $cov edges, corpus $corpus, artifacts: $(ls "target/fuzz/artifacts/$t" | wc -l)"
    echo "$line" | tee -a target/fuzz/summary.txt
done
