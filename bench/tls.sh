#!/usr/bin/env bash
# bench/tls.sh -- what mutual TLS costs the data path: `etp bench propagate`
# with TLS (BENCH_TLS=1, the default) and with plain TCP on loopback
# (BENCH_TLS=0), PAIRS times each, alternating which goes first, in one run.
# Prints each metric's mean with TLS and without, and the ratio TLS/plain
# (above 1 for rates: TLS is faster; below 1 for times and lags), and for
# the lag metrics the difference in ms.
#
#   bash bench/tls.sh target/release/etp
#   PAIRS=3 N=200000 bash bench/tls.sh target/release/etp
set -euo pipefail
etp=${1:?usage: tls.sh PATH/TO/etp}
pairs=${PAIRS:-2}
export N=${N:-200000} B=${B:-100} M=${M:-2000} M_PACED=${M_PACED:-500}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "# N=$N B=$B M=$M M_PACED=$M_PACED PAIRS=$pairs; $(nproc) cpus; $(date -u +%FT%TZ)"
for i in $(seq 1 "$pairs"); do
  if (( i % 2 )); then order="1 0"; else order="0 1"; fi
  for t in $order; do
    echo "# pair $i: BENCH_TLS=$t" >&2
    BENCH_TLS=$t "$etp" bench propagate > "$tmp/run-$i-$t.txt"
  done
done
cat "$tmp"/run-*-1.txt > "$tmp/tls.txt"
cat "$tmp"/run-*-0.txt > "$tmp/plain.txt"
awk '
  FNR==NR { if ($0 !~ /^#/ && NF>=3) { s[$1]+=$2; c[$1]++; u[$1]=$3 } ; next }
  $0 !~ /^#/ && NF>=3 { p[$1]+=$2; q[$1]++; if (!($1 in seen)) { seen[$1]=1; order[n++]=$1 } }
  END {
    for (i = 0; i < n; i++) {
      k = order[i]
      if (!(k in c) || k ~ /^config_/) continue
      a = s[k]/c[k]; b = p[k]/q[k]
      r = (b != 0) ? a/b : 0
      line = sprintf("%-40s tls %12.3f  plain %12.3f  %-9s ratio %.3f", k, a, b, u[k], r)
      if (u[k] == "ms") line = line sprintf("  diff %+.3f ms", a-b)
      print line
    }
  }
' "$tmp/tls.txt" "$tmp/plain.txt"
