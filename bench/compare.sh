#!/usr/bin/env bash
# bench/compare.sh -- run the engine's propagation benchmark and the
# PostgreSQL peer back to back with the same parameters, and print each metric
# both report, side by side, with the ratio engine/peer.
#
#   bash bench/compare.sh 'target/release/etp bench propagate'
#   N=1000000 bash bench/compare.sh 'target/release/etp bench propagate'
#
# Both commands must print `metric_name value unit` lines (lines starting with
# '#' are context). N, B, M and M_PACED are exported to both. For rates
# (unit ending in /s) a ratio above 1 means the engine is faster; for times and
# lags (s, ms) a ratio below 1 means the engine is faster.
set -euo pipefail
engine_cmd=${1:?usage: compare.sh 'ENGINE BENCH COMMAND'}
here=$(cd "$(dirname "$0")" && pwd)
export N=${N:-200000} B=${B:-100} M=${M:-2000} M_PACED=${M_PACED:-500}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "# N=$N B=$B M=$M M_PACED=$M_PACED; $(nproc) cpus; $(date -u +%FT%TZ)"
echo "# engine: $engine_cmd" >&2
bash -c "$engine_cmd" > "$tmp/engine.txt"
echo "# peer: PostgreSQL logical replication" >&2
bash "$here/pg_peer.sh" > "$tmp/peer.txt"
awk '
  FNR==NR { if ($0 !~ /^#/ && NF>=2) { e[$1]=$2; u[$1]=$3 } ; next }
  $0 !~ /^#/ && NF>=2 && ($1 in e) {
    r = ($2+0 != 0) ? e[$1]/$2 : 0
    printf "%-40s engine %12s  peer %12s  %-7s ratio %.2f\n", $1, e[$1], $2, u[$1], r
    n++
  }
  END { if (!n) { print "no metric in common: name the engine metrics as pg_peer.sh does" > "/dev/stderr"; exit 1 } }
' "$tmp/engine.txt" "$tmp/peer.txt"
