#!/usr/bin/env bash
# Builds and runs every fuzz target for a while, one after the other, then reports crashes.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    (default 600 s each, all targets)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). It uses nightly-only flags, so on
# a stable toolchain it sets RUSTC_BOOTSTRAP=1. AddressSanitizer is used when the
# toolchain ships its runtime; FUZZ_SANITIZER=none turns it off. Runs are niced and use
# one job: the machine is shared. New inputs go to fuzz/corpus-work/<target> (ignored by
# git), seeded from the committed corpus fuzz/corpus/<target>; crashes go to
# fuzz/artifacts/<target>. CI does not run this.
set -uo pipefail

cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(oru_to_report mllp_codec ack_builder mapping_loader)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

nice -n 10 cargo fuzz build -O -a -s "$sanitizer" || exit 1

declare -A dict=([oru_to_report]=fuzz/hl7.dict)
status=0
for t in "${targets[@]}"; do
    work="fuzz/corpus-work/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    extra=()
    if [ -n "${dict[$t]:-}" ]; then
        extra+=("-dict=${dict[$t]}")
    fi
    echo "== $t: ${secs}s"
    # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: over 2 GiB is a leak
    # or a bomb. The committed corpus is read, new inputs are written to the work dir.
    nice -n 10 cargo fuzz run -O -a -s "$sanitizer" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "${extra[@]}" 2>&1 | tee "fuzz/artifacts/$t/last-run.log" |
        grep -E '^#[0-9]+ +(DONE|INITED)|^==[0-9]+==|panicked|^SUMMARY|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' |
        cut -c1-300
    found=$(find "fuzz/artifacts/$t" -type f ! -name last-run.log | wc -l)
    echo "== $t: corpus $(ls "$work" | wc -l) files, $found crash/timeout/oom artifact(s)"
    [ "$found" -eq 0 ] || status=1
done

echo
if [ "$status" -ne 0 ]; then
    echo "Crashes found (reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>):"
    find fuzz/artifacts -type f ! -name last-run.log
else
    echo "No crashes."
fi
exit "$status"
