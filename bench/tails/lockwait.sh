#!/usr/bin/env bash
# Mutex waits over 0.5 ms in the nodes (a uprobe on std's lock_contended)
# through a whole propagate bench; then lockwait.py OUT counts those in phase b:
#   BIN=target/release/etp bash bench/tails/lockwait.sh /tmp/lw
set -u
out=${1:-/tmp/lw}; rm -rf "$out"; mkdir -p "$out"
bin=$(readlink -f ${BIN:-target/release/etp})
sym=$(bpftrace -l "uprobe:$bin:*lock_contended*" | head -1 | sed 's/^uprobe://')
cat > "$out/lw.bt" <<BT
uprobe:$sym { @s[tid] = nsecs; }
uretprobe:$sym /@s[tid]/ { \$d = nsecs - @s[tid]; delete(@s[tid]); if (\$d > 500000) { printf("W %llu %d %d %s %llu\n", nsecs, pid, tid, comm, \$d); } }
BT
bpftrace "$out/lw.bt" > "$out/bt.txt" 2>"$out/bt.err" &
bt=$!
sleep 3
export N=${N:-200000} B=100 M=2000 M_PACED=500
ETP_BENCH_LAG_DUMP=$out "$bin" bench propagate > "$out/out.txt" 2>"$out/err.txt"
python3 -c "import time; print(time.time()-time.monotonic())" > "$out/offset.txt"
kill -INT $bt; wait $bt
