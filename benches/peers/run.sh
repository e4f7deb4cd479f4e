#!/usr/bin/env bash
# Side-by-side benchmark of qubs-bridge against peer libraries (see BENCHMARKS.md).
#
# Installs the peers (Python ones into benches/peers/.venv, medplum into
# benches/peers/node_modules from package-lock.json), generates one corpus, runs every
# implementation over it, checks that they all produced the same results, and prints the
# ratio table. Settings (environment): RUNS (5), N_ORU (2000), N_ORDERS (2000),
# CHECK (items compared across implementations, 50), PEERS_WORK (target/peers),
# PYTHON (python3), and cargo's own (CARGO_TARGET_DIR, CARGO_BUILD_JOBS).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${PEERS_WORK:-$root/target/peers}
runs=${RUNS:-5}
check=${CHECK:-50}
py="$here/.venv/bin/python"

echo "== peers"
[ -x "$py" ] || "${PYTHON:-python3}" -m venv "$here/.venv"
"$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

echo "== building the qubs-bridge side (release)"
(cd "$root" && cargo bench --bench peers --no-run --quiet)

echo "== corpus"
rm -rf "$work/corpus" "$work/out"
mkdir -p "$work"
"$py" "$here/gen_corpus.py" "$work/corpus" --oru "${N_ORU:-2000}" --orders "${N_ORDERS:-2000}"

echo "== machine"
echo "cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "rustc: $(rustc --version); $("$py" --version); node $(node --version)"
echo "before: $(uptime)"

results="$work/results.jsonl"
: >"$results"
common=(--corpus "$work/corpus" --out "$work/out" --runs "$runs" --check "$check")
# Other work on the machine skews the numbers: the load average is shown per implementation.
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "== qubs-bridge"; load
(cd "$root" && cargo bench --bench peers --quiet -- "${common[@]}") | tee -a "$results"
for impl in hl7 hl7apy fhir.resources; do
    echo "== $impl"; load
    (cd "$here" && "$py" py_peers.py --impl "$impl" "${common[@]}") | tee -a "$results"
done
echo "== medplum"; load
(cd "$here" && node medplum_peer.mjs "${common[@]}") | tee -a "$results"
echo "after: $(uptime)"
echo
"$py" "$here/compare.py" "$work"
