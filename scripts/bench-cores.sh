#!/usr/bin/env bash
# Does the hub's fix path scale with cores? Runs region-hub's `shard_throughput` bench (the
# shard workers' code on the Helsinki graph, see region-hub/benches/shard_throughput.rs)
# pinned to one core and then to two, alternating, BENCH_REPEATS times (default 3), and prints
# the median fixes/s of each and their ratio (issue 11 point 4 asks for >= 1.7).
# BENCH_DELIVERIES / BENCH_FIXES_PER_DRIVER / BENCH_SHARDS go to the bench. Run it on a quiet
# machine: anything else running takes cores from the two-core run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "[cores] taskset (util-linux) is needed" >&2; exit 1; }
if (( $(nproc) < 2 )); then
    echo "[cores] needs at least 2 cores, this machine has $(nproc)" >&2
    exit 1
fi
bin=$(cargo bench -p region-hub --bench shard_throughput --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "shard_throughput" and m.get("executable"):
        print(m["executable"])')
[[ -x $bin ]] || { echo "[cores] could not build the shard_throughput bench" >&2; exit 1; }
export BENCH_DELIVERIES=${BENCH_DELIVERIES:-4000} BENCH_FIXES_PER_DRIVER=${BENCH_FIXES_PER_DRIVER:-100}
repeats=${BENCH_REPEATS:-3}
one=() two=()
for i in $(seq "$repeats"); do
    for cpus in 0 0,1; do
        line=$(taskset -c "$cpus" "$bin")
        echo "[cores] run $i on cpu $cpus: $line"
        rate=$(sed -E 's/.* fixes_per_s=([0-9]+).*/\1/' <<<"$line")
        if [[ $cpus == 0 ]]; then one+=("$rate"); else two+=("$rate"); fi
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(median "${one[@]}") m2=$(median "${two[@]}")
python3 - "$m1" "$m2" <<'PY'
import sys
one, two = float(sys.argv[1]), float(sys.argv[2])
print(f"[cores] median fixes/s: 1 core {one:,.0f}, 2 cores {two:,.0f}; ratio {two / one:.2f} (target >= 1.7)")
PY
