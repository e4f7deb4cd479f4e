#!/usr/bin/env bash
# Soak and fault run (not run by CI): builds in release, runs benches/soak.rs for
# --minutes (default 30) with the simulator cycling through faults, and keeps the sample
# table, the summary, the CSV and the bridge's log under $CARGO_TARGET_DIR/soak/ (or
# target/soak/). Exit status 1 when any check fails.
#
#   benches/soak.sh                       # 30 minutes
#   benches/soak.sh --minutes 3 --phase-secs 20
#   nice -n 5 benches/soak.sh             # on a shared machine
#
# Other options go to the driver as given: --rate, --connections, --appointments,
# --ack-mode, --phase-secs, --sample-secs, --feed-rate, --poll-secs, --drain-minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
[[ " ${args[*]-} " == *" --minutes "* ]] || args+=(--minutes 30)

out="${CARGO_TARGET_DIR:-target}/soak"
mkdir -p "$out"
stamp="$(date +%Y%m%d-%H%M%S)"
report="$out/soak-$stamp.txt"
csv="$out/soak-$stamp.csv"
log="$out/soak-$stamp-bridge.log"

cargo bench --locked --bench soak --no-run
status=0
cargo bench --locked --bench soak -- "${args[@]}" --csv "$csv" --log "$log" \
    | tee "$report" || status=$?
{
    echo
    echo "CSV ($csv):"
    cat "$csv" 2>/dev/null || echo "(none written)"
} >>"$report"

echo
echo "== soak summary (full report: $report) =="
sed -n '/^Summary$/,$p' "$report" | sed '/^CSV (/,$d'
exit "$status"
