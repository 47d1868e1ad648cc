#!/usr/bin/env bash
# Scheduler switches on every CPU through phase b (perf to tmpfs), with
# every lag sample kept. Then: python3 paced.py OUT [paced|full_speed] [MS]
#
#   BIN=target/release/etp bash bench/tails/paced.sh /tmp/paced
set -u
out=${1:-/tmp/paced}; rm -rf "$out"; mkdir -p "$out"
export N=${N:-200000} B=100 M=2000 M_PACED=500
ETP_BENCH_LAG_DUMP=$out ${BIN:-target/release/etp} bench propagate > "$out/out.txt" 2>"$out/err.txt" &
bp=$!
until grep -q "^b\. lag" "$out/err.txt" 2>/dev/null; do sleep 0.01; done
python3 -c "import time; print(time.time()-time.monotonic())" > "$out/offset.txt"
perf record -k CLOCK_MONOTONIC -e sched:sched_switch -a -o /dev/shm/paced.data -- sleep 5 2>"$out/perf.err"
wait $bp
perf script -i /dev/shm/paced.data -F comm,pid,tid,cpu,time,event,trace > "$out/sched.txt" 2>/dev/null
rm -f /dev/shm/paced.data
