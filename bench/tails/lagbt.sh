#!/usr/bin/env bash
# Runs `etp bench propagate` under bpftrace (every fsync/fdatasync with its
# duration, every block request with its issuer, size and latency, and every
# run-queue wait over 0.3 ms), keeping every lag sample of phase b
# (ETP_BENCH_LAG_DUMP). Then: python3 lagcause.py OUT
#
#   BIN=target/release/etp bash bench/tails/lagbt.sh /tmp/lagb
#
# Needs bpftrace (Debian: apt-get install bpftrace) and root.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/tmp/lagb}; rm -rf "$out"; mkdir -p "$out"
export N=${N:-200000} B=${B:-100} M=${M:-2000} M_PACED=${M_PACED:-500}
bpftrace "$here/lag.bt" > "$out/bt.txt" 2>"$out/bt.err" &
bt=$!
sleep 3
ETP_BENCH_LAG_DUMP=$out ${BIN:-target/release/etp} bench propagate > "$out/out.txt" 2>"$out/err.txt"
# bpftrace prints monotonic nanoseconds; the samples are wall-clock µs.
python3 -c "import time; print(time.time()-time.monotonic())" > "$out/offset.txt"
kill -INT $bt; wait $bt
