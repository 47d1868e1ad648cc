#!/usr/bin/env bash
# bench/pg_commit_peer.sh -- PostgreSQL's group commit on this machine: the peer
# for `etp bench commit`. Single-row durable commits (fsync = on,
# synchronous_commit = on, autocommit INSERTs of the same shape as the bench's
# records) from 1 and from 16 pgbench clients, in interleaved rounds.
#
#   bash bench/pg_commit_peer.sh            # ROUNDS=3 SECS=4
#
# Output: `metric value unit` lines (pg_commit_1_client_per_s,
# pg_commit_16_clients_per_s) and the median per-round 16/1 ratio as a
# comment. The cluster lives in a throw-away directory under BENCH_TMPDIR
# (default $TMPDIR or /tmp) on a unix socket only, and is torn down on exit.
# Run as root, the server runs as PG_OSUSER (default postgres).
set -euo pipefail
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-4}
PORT=${PORT:-55499}
PG_OSUSER=${PG_OSUSER:-postgres}
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}

die() { echo "pg_commit_peer: $*" >&2; exit 2; }
PGBIN=""
for d in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /usr/local/bin; do
  if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then PGBIN=$d; break; fi
done
[ -n "$PGBIN" ] || die "initdb and pg_ctl not found (install PostgreSQL)"
PGBENCH=$(command -v pgbench || true)
[ -n "$PGBENCH" ] || { [ -x "$PGBIN/pgbench" ] && PGBENCH=$PGBIN/pgbench; } || die "pgbench not found"
PSQL=$(command -v psql || echo "$PGBIN/psql")

TMP=$(mktemp -d "$BENCH_TMPDIR/pg-commit-peer.XXXXXX")
if [ "$(id -u)" = 0 ]; then
  id "$PG_OSUSER" >/dev/null 2>&1 || die "OS user $PG_OSUSER does not exist"
  chown "$PG_OSUSER" "$TMP"
  as_pg() { (cd "$TMP" && runuser -u "$PG_OSUSER" -- "$@"); }
else
  as_pg() { (cd "$TMP" && "$@"); }
fi
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_pg "$PGBIN/initdb" -D "$TMP/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
cat >>"$TMP/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$TMP'
port = $PORT
fsync = on
synchronous_commit = on
max_connections = 40
CONF
as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w -t 60 start >/dev/null
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PORT" -U postgres -d postgres \
  -c "CREATE TABLE bench(id bigserial PRIMARY KEY, client int, n int, payload text)"
echo "INSERT INTO bench(client, n, payload) VALUES (:client_id, 1, repeat('x', 64));" >"$TMP/insert.sql"

tps() { # clients
  local jobs=$(( $1 < 2 ? 1 : 2 ))
  "$PGBENCH" -n -h "$TMP" -p "$PORT" -U postgres -f "$TMP/insert.sql" \
    -c "$1" -j "$jobs" -T "$SECS" postgres 2>/dev/null |
    awk '/^tps/ { printf "%.0f", $3; exit }'
}
ones=(); sixteens=(); ratios=()
for r in $(seq 1 "$ROUNDS"); do
  one=$(tps 1 || true); sixteen=$(tps 16 || true)
  [ -n "$one" ] && [ -n "$sixteen" ] || die "pgbench printed no rate (see $TMP/server.log)"
  echo "# round $r: 1 client $one/s, 16 clients $sixteen/s"
  ones+=("$one"); sixteens+=("$sixteen")
  ratios+=("$(awk -v a="$sixteen" -v b="$one" 'BEGIN { printf "%.2f", a / b }')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "pg_commit_1_client_per_s $(median "${ones[@]}") /s"
echo "pg_commit_16_clients_per_s $(median "${sixteens[@]}") /s"
echo "# median per-round ratio: PostgreSQL 16 clients / 1 client = $(median "${ratios[@]}")"
