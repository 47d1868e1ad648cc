#!/usr/bin/env bash
# Interleaved A/B of `etp bench propagate` (the engine alone), every lag
# sample kept: ab.sh ROUNDS OUT BIN... ; then abtab.py OUT and abtail.py OUT.
set -u
rounds=$1; out=$2; shift 2
mkdir -p "$out"
export N=${N:-200000} B=100 M=${M:-2000} M_PACED=${M_PACED:-500}
for r in $(seq 1 "$rounds"); do
  i=0
  for bin in "$@"; do
    i=$((i+1))
    mkdir -p "$out/lag-r$r-b$i"; ETP_BENCH_LAG_DUMP="$out/lag-r$r-b$i" "$bin" bench propagate > "$out/r$r-b$i.txt" 2>/dev/null || echo "run $r $bin failed"
  done
done
