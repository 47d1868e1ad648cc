#!/usr/bin/env bash
# Scheduler switches on every CPU from the drain through the start of the
# lag phase (perf to tmpfs, so its writes do not touch the disk).
set -u
out=${1:-/tmp/settle}; rm -rf "$out"; mkdir -p "$out"
export N=${N:-200000} B=100 M=2000 M_PACED=500
ETP_BENCH_LAG_DUMP=$out ${BIN:-target/release/etp} bench propagate > "$out/out.txt" 2>"$out/err.txt" &
bp=$!
# TRIGGER: the bench's stderr line that starts the recording.
until grep -q "${TRIGGER:-^a2\. backlog}" "$out/err.txt" 2>/dev/null; do sleep 0.01; done
python3 -c "import time; print(time.time()-time.monotonic())" > "$out/offset.txt"
perf record -k CLOCK_MONOTONIC -e sched:sched_switch -a -o /dev/shm/settle.data -- sleep ${SETTLE_SECONDS:-7} 2>"$out/perf.err"
wait $bp
perf script -i /dev/shm/settle.data -F comm,pid,tid,cpu,time,event,trace > "$out/sched.txt" 2>/dev/null
rm -f /dev/shm/settle.data
