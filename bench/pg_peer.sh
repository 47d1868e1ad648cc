#!/usr/bin/env bash
# bench/pg_peer.sh -- PostgreSQL logical replication as a performance peer
# for the master/replicate propagation engine.
#
#   bash bench/pg_peer.sh            # defaults: N=200000 B=100 M=2000
#   N=50000 B=10 bash bench/pg_peer.sh
#
# What it builds (all on 127.0.0.1, in a throw-away directory, torn down on exit):
#   master  cluster, port 54321, db "bench":  items + bench_marker,
#           publication pub_full (all rows, all columns)
#           publication pub_part (items (id, grp, qty) WHERE (grp % 4 = 0))
#   replica cluster, port 54322:
#           db full_rep: items (all columns)   <- subscription sub_full
#           db part_rep: items (id, grp, qty)  <- subscription sub_part
#
# Phases, in this order (metric prefixes):
#   a   bulk: N rows in transactions of B rows on the master, time until both
#       replicates have applied everything (paced by the master's commit rate);
#   c   initial sync: a new subscription (full, then partial) copies the N-row
#       table (copy_data = true); time until all its tables are 'ready';
#   a2  backlog drain: apply held back while another N rows are committed, then
#       released; time to drain (what decode + send + apply can do on their own);
#   b   commit-to-apply lag: M single-row commits at full speed, then M_PACED
#       commits PACE_MS apart; p50/p90/p99/max lag per commit;
#   d   N/10 updates, then N/10 deletes, B rows per transaction; time to catch up.
# Every phase also reports CPU seconds per cluster and per replication process,
# machine CPU busy %, CPU used by anything else (other load on the machine),
# disk writes and flushes per second, and master WAL volume.
#
# Catch-up detection: every phase ends with one extra single-row commit into
# bench_marker (published by both publications).  A subscription applies the
# master's transactions one at a time, in commit order, so the moment the
# marker row is visible on a replicate, every transaction before it is applied
# and committed there.  A server-side PL/pgSQL loop on each replicate polls for
# it every 2 ms (index lookup; each poll takes a fresh snapshot).
#
# Commit-to-apply lag: the master runs with track_commit_timestamp = on, so each
# row's commit time is pg_xact_commit_timestamp(xmin) (taken just before the
# commit record is written and flushed).  On each replicate an AFTER INSERT
# trigger, enabled ALWAYS so it fires in the apply worker, stores
# clock_timestamp() at the moment the apply worker inserts the row.  Both
# servers read the same clock.  lag = apply time - master commit time, and so
# includes the master's WAL fsync, logical decoding, TCP, and the apply itself
# (not the replicate's own commit, which follows within microseconds when the
# subscription's synchronous_commit is off, PostgreSQL's default for
# subscriptions).
#
# Env:
#   N (200000) rows in the bulk phase; B (100) rows per master transaction;
#   M (2000) single-row commits for the lag phase at full speed;
#   M_PACED (500) single-row commits with PACE_MS (5) ms between them (unloaded lag);
#   SUB_SYNC_COMMIT (default) -- the subscriptions' synchronous_commit; "default"
#       leaves PostgreSQL's default (off for subscriptions); set "on" to make every
#       applied transaction fsync on the replicate as well;
#   PORT_M (54321), PORT_R (54322), PHASE_TIMEOUT_S (240), BENCH_TMPDIR ($TMPDIR or /tmp),
#   PG_OSUSER (postgres; used when run as root), KEEP (0; 1 keeps the data directory).
#
# Output: one line per figure, `metric_name value unit`; lines starting with '#'
# are context.  Progress goes to stderr.
set -euo pipefail
export LC_ALL=C

N=${N:-200000}
B=${B:-100}
M=${M:-2000}
M_PACED=${M_PACED:-500}
PACE_MS=${PACE_MS:-5}
SUB_SYNC_COMMIT=${SUB_SYNC_COMMIT:-default}
PORT_M=${PORT_M:-54321}
PORT_R=${PORT_R:-54322}
PHASE_TIMEOUT_S=${PHASE_TIMEOUT_S:-240}
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
PG_OSUSER=${PG_OSUSER:-postgres}
KEEP=${KEEP:-0}
HOST=127.0.0.1

die() { echo "pg_peer.sh: $*" >&2; exit 1; }
log() { echo "pg_peer.sh: $*" >&2; }
emit() { printf '%s %s %s\n' "$1" "$2" "$3"; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }
now() { date +%s.%N; }

for v in N B M M_PACED PACE_MS PORT_M PORT_R PHASE_TIMEOUT_S; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
[ "$N" -ge 1000 ] || die "N must be >= 1000"
[ "$B" -ge 1 ] || die "B must be >= 1"
[ "$M" -ge 1 ] || die "M must be >= 1"
case $SUB_SYNC_COMMIT in default|on|off|local|remote_write|remote_apply) ;; *) die "bad SUB_SYNC_COMMIT";; esac

# ---------------------------------------------------------------- install
find_pgbin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/psql" ]; then
      echo "$d"; return 0
    fi
  done
  return 1
}

if ! PGBIN=$(find_pgbin); then
  [ "$(id -u)" = 0 ] || die "PostgreSQL server is not installed and we are not root"
  log "installing PostgreSQL from Debian (no cluster is created or started by the install)"
  # keep the package from creating/starting its own 'main' cluster
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/pg_peer.conf
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql postgresql-client >&2 || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  PGBIN=$(find_pgbin) || die "PostgreSQL still not found after install"
fi
PSQL="$PGBIN/psql"
PGVER=$("$PGBIN/postgres" --version)

# ---------------------------------------------------------------- clusters
for p in "$PORT_M" "$PORT_R"; do
  if ss -ltn 2>/dev/null | grep -q ":$p "; then die "port $p is already in use"; fi
done

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/pg_peer.XXXXXX")
chmod 755 "$TMP"
if [ "$(id -u)" = 0 ]; then
  id "$PG_OSUSER" >/dev/null 2>&1 || die "OS user $PG_OSUSER does not exist"
  chown "$PG_OSUSER" "$TMP"
  as_pg() { (cd "$TMP" && runuser -u "$PG_OSUSER" -- "$@"); }
else
  as_pg() { (cd "$TMP" && "$@"); }
fi

WAIT_PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${WAIT_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  # replica first, so the master's walsenders go away with their peers
  for c in replica master; do
    if [ -f "$TMP/$c/postmaster.pid" ]; then
      as_pg "$PGBIN/pg_ctl" -D "$TMP/$c" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        as_pg "$PGBIN/pg_ctl" -D "$TMP/$c" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
  done
  if [ $rc != 0 ]; then
    for c in master replica; do
      [ -f "$TMP/$c.log" ] && { echo "--- tail of $c log" >&2; tail -n 15 "$TMP/$c.log" >&2; }
    done
  fi
  if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

init_cluster() { # name port extra-conf
  local dir="$TMP/$1"
  as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
  cat >>"$dir/postgresql.conf" <<EOF
# --- pg_peer.sh
listen_addresses = '$HOST'
port = $2
unix_socket_directories = '$TMP'
fsync = on
synchronous_commit = on
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_worker_processes = 16
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
$3
EOF
  as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$TMP/$1.log" -w -t 60 start >/dev/null
}

log "starting clusters in $TMP ($PGVER)"
init_cluster master "$PORT_M" "track_commit_timestamp = on"
init_cluster replica "$PORT_R" ""

psql_m() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -At -h $HOST -p "$PORT_M" -U postgres -d bench "$@"; }
psql_r() { local db=$1; shift; "$PSQL" -X -q -v ON_ERROR_STOP=1 -At -h $HOST -p "$PORT_R" -U postgres -d "$db" "$@"; }

"$PSQL" -X -q -v ON_ERROR_STOP=1 -h $HOST -p "$PORT_M" -U postgres -d postgres -c "CREATE DATABASE bench"
psql_m <<'SQL'
CREATE TABLE items(id bigint PRIMARY KEY, grp int NOT NULL, name text, qty int, price numeric, note text);
-- A row filter on a publication that publishes UPDATE/DELETE may only use
-- replica-identity columns, and a column list must contain them; with the
-- default identity (the primary key, id) "grp % 4 = 0" is refused, and
-- PostgreSQL 15 allows no column list with REPLICA IDENTITY FULL.  So the
-- identity is a unique index on (id, grp).
CREATE UNIQUE INDEX items_id_grp ON items(id, grp);
ALTER TABLE items REPLICA IDENTITY USING INDEX items_id_grp;
CREATE TABLE bench_marker(id int PRIMARY KEY, phase text NOT NULL);
CREATE PUBLICATION pub_full FOR TABLE items, bench_marker;
CREATE PUBLICATION pub_part FOR TABLE items (id, grp, qty) WHERE (grp % 4 = 0), TABLE bench_marker;
SQL

REPLICA_HELPERS=$(cat <<'SQL'
CREATE TABLE bench_marker(id int PRIMARY KEY, phase text NOT NULL);
CREATE TABLE lag_log(id bigint, applied_at timestamptz);
CREATE TABLE lag_src(id bigint, commit_epoch numeric);
CREATE FUNCTION bench_wait_marker(p_id int, p_timeout float8) RETURNS numeric
LANGUAGE plpgsql SET search_path = public AS $f$
DECLARE
  deadline timestamptz := clock_timestamp() + make_interval(secs => p_timeout);
  errs0 bigint := (SELECT coalesce(sum(apply_error_count + sync_error_count), 0) FROM pg_stat_subscription_stats);
  errs bigint;
  n int := 0;
BEGIN
  LOOP
    IF EXISTS (SELECT 1 FROM bench_marker WHERE id = p_id) THEN
      RETURN extract(epoch FROM clock_timestamp());
    END IF;
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'timeout waiting for marker %', p_id; END IF;
    n := n + 1;
    IF n % 50 = 0 THEN  -- every ~0.1 s: give up at once if the apply worker keeps failing
      PERFORM pg_stat_clear_snapshot();
      errs := (SELECT coalesce(sum(apply_error_count + sync_error_count), 0) FROM pg_stat_subscription_stats);
      IF errs > errs0 THEN RAISE EXCEPTION 'subscription worker error while waiting for marker % (see replica log)', p_id; END IF;
    END IF;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $f$;
-- all tables of subscription p_sub have a state in p_states ('r' = ready;
-- 'f','s' = data copy committed, catch-up pending or done)
CREATE FUNCTION bench_wait_sub_state(p_sub text, p_states text, p_timeout float8) RETURNS numeric
LANGUAGE plpgsql SET search_path = public AS $f$
DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => p_timeout);
BEGIN
  LOOP
    IF EXISTS (SELECT 1 FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
               WHERE s.subname = p_sub)
       AND NOT EXISTS (SELECT 1 FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
                       WHERE s.subname = p_sub AND position(r.srsubstate::text IN p_states) = 0) THEN
      RETURN extract(epoch FROM clock_timestamp());
    END IF;
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'timeout waiting for subscription %', p_sub; END IF;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $f$;
-- wait until subscription p_sub has (p_running) or has no (not p_running) worker
CREATE FUNCTION bench_wait_worker(p_sub text, p_timeout float8, p_running bool DEFAULT true) RETURNS numeric
LANGUAGE plpgsql SET search_path = public AS $f$
DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => p_timeout);
BEGIN
  LOOP
    IF EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = p_sub AND pid IS NOT NULL) = p_running THEN
      RETURN extract(epoch FROM clock_timestamp());
    END IF;
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'timeout waiting for a worker of %', p_sub; END IF;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $f$;
-- apply workers run with an empty search_path: qualify everything
CREATE FUNCTION lag_trg_fn() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $f$
BEGIN
  INSERT INTO public.lag_log VALUES (NEW.id, pg_catalog.clock_timestamp());
  RETURN NULL;
END $f$;
SQL
)
FULL_DDL="CREATE TABLE items(id bigint PRIMARY KEY, grp int NOT NULL, name text, qty int, price numeric, note text);"
PART_DDL="CREATE TABLE items(id bigint PRIMARY KEY, grp int NOT NULL, qty int);"

make_replica_db() { # db ddl
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -h $HOST -p "$PORT_R" -U postgres -d postgres -c "CREATE DATABASE $1"
  psql_r "$1" -c "$2"
  psql_r "$1" <<<"$REPLICA_HELPERS"
}

SUB_WITH=""
[ "$SUB_SYNC_COMMIT" = default ] || SUB_WITH="synchronous_commit = '$SUB_SYNC_COMMIT'"
create_sub() { # db sub pub [extra with-options]
  local with="$SUB_WITH"
  if [ -n "${4:-}" ]; then with="${with:+$with, }$4"; fi
  psql_r "$1" -c "CREATE SUBSCRIPTION $2 CONNECTION 'host=$HOST port=$PORT_M dbname=bench user=postgres' PUBLICATION $3 ${with:+WITH ($with)}"
}

make_replica_db full_rep "$FULL_DDL"
make_replica_db part_rep "$PART_DDL"
create_sub full_rep sub_full pub_full
create_sub part_rep sub_part pub_part
# (the launcher starts the second worker ~5 s after the first, see phase c)
psql_r full_rep -c "SELECT bench_wait_sub_state('sub_full', 'r', $PHASE_TIMEOUT_S)" >/dev/null
psql_r part_rep -c "SELECT bench_wait_sub_state('sub_part', 'r', $PHASE_TIMEOUT_S)" >/dev/null
LAST_WORKER_START=$(now)

# ---------------------------------------------------------------- measurement helpers
PM_M=$(head -1 "$TMP/master/postmaster.pid")
PM_R=$(head -1 "$TMP/replica/postmaster.pid")
CLK_TCK=$(getconf CLK_TCK)
DISK=$(basename "$(df --output=source "$TMP" | tail -1)")

# CPU ticks of a cluster: postmaster (incl. exited, reaped backends) + live children
cluster_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pp="$1" '{
    pid = $1; rest = $0; sub(/^.*\) /, "", rest); n = split(rest, f, " ");
    if (pid == pp) t += f[12] + f[13] + f[14] + f[15]; else if (f[2] == pp) t += f[12] + f[13];
  } END { print t + 0 }'
}
pid_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
sys_cpu() { awk '/^cpu /{ print $2+$3+$4+$7+$8, $5, $6, $9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }
disk_stat() { awk -v d="$DISK" '$3 == d { print $8, (NF >= 20 ? $19 : 0) }' /proc/diskstats | head -1; }

worker_pids() { # walsender and apply worker of each main subscription
  WS_FULL=$(psql_m -c "SELECT pid FROM pg_stat_replication WHERE application_name = 'sub_full'")
  WS_PART=$(psql_m -c "SELECT pid FROM pg_stat_replication WHERE application_name = 'sub_part'")
  AP_FULL=$(psql_r full_rep -c "SELECT pid FROM pg_stat_subscription WHERE subname = 'sub_full' AND relid IS NULL")
  AP_PART=$(psql_r part_rep -c "SELECT pid FROM pg_stat_subscription WHERE subname = 'sub_part' AND relid IS NULL")
  [ -n "$WS_FULL" ] && [ -n "$WS_PART" ] && [ -n "$AP_FULL" ] && [ -n "$AP_PART" ]
}
for _ in $(seq 100); do worker_pids && break; sleep 0.1; done
worker_pids || die "replication workers not found"

declare -A SNAP
snap_begin() {
  SNAP[m]=$(cluster_ticks "$PM_M"); SNAP[r]=$(cluster_ticks "$PM_R")
  SNAP[wsf]=$(pid_ticks "$WS_FULL"); SNAP[wsp]=$(pid_ticks "$WS_PART")
  SNAP[apf]=$(pid_ticks "$AP_FULL"); SNAP[app]=$(pid_ticks "$AP_PART")
  SNAP[sys]=$(sys_cpu); SNAP[disk]=$(disk_stat)
  SNAP[lsn]=$(psql_m -c "SELECT pg_current_wal_lsn()")
}
snap_end() { # prefix wall_seconds with_workers rows
  local p=$1 wall=$2 rows=${4:-0}
  local m r; m=$(cluster_ticks "$PM_M"); r=$(cluster_ticks "$PM_R")
  emit "${p}_cpu_master_cluster_s" "$(calc "($m - ${SNAP[m]}) / $CLK_TCK" 2)" s
  emit "${p}_cpu_replica_cluster_s" "$(calc "($r - ${SNAP[r]}) / $CLK_TCK" 2)" s
  if [ "$rows" -gt 0 ]; then
    # CPU per row, as `etp bench propagate` reports it per node: the master
    # cluster's, the replica cluster's (both replicates), and their sum.
    emit "${p}_cpu_master_us_per_row" "$(calc "($m - ${SNAP[m]}) * 1000000 / $CLK_TCK / $rows" 1)" us/row
    emit "${p}_cpu_replicas_us_per_row" "$(calc "($r - ${SNAP[r]}) * 1000000 / $CLK_TCK / $rows" 1)" us/row
    emit "${p}_cpu_total_us_per_row" "$(calc "($m - ${SNAP[m]} + $r - ${SNAP[r]}) * 1000000 / $CLK_TCK / $rows" 1)" us/row
  fi
  if [ "${3:-1}" = 1 ]; then
    emit "${p}_cpu_walsender_full_s" "$(calc "($(pid_ticks "$WS_FULL") - ${SNAP[wsf]}) / $CLK_TCK" 2)" s
    emit "${p}_cpu_walsender_part_s" "$(calc "($(pid_ticks "$WS_PART") - ${SNAP[wsp]}) / $CLK_TCK" 2)" s
    emit "${p}_cpu_apply_full_s" "$(calc "($(pid_ticks "$AP_FULL") - ${SNAP[apf]}) / $CLK_TCK" 2)" s
    emit "${p}_cpu_apply_part_s" "$(calc "($(pid_ticks "$AP_PART") - ${SNAP[app]}) / $CLK_TCK" 2)" s
  fi
  local s0 s1; read -r -a s0 <<<"${SNAP[sys]}"; read -r -a s1 <<<"$(sys_cpu)"
  local tot=$(( s1[4] - s0[4] )); [ "$tot" -gt 0 ] || tot=1
  emit "${p}_machine_cpu_busy_pct" "$(calc "100 * (${s1[0]} - ${s0[0]}) / $tot" 1)" %
  # busy CPU time of everything that is neither cluster (psql clients, this script, other load)
  emit "${p}_cpu_other_s" "$(calc "((${s1[0]} - ${s0[0]}) - ($m - ${SNAP[m]}) - ($r - ${SNAP[r]})) / $CLK_TCK" 2)" s
  emit "${p}_machine_iowait_pct" "$(calc "100 * (${s1[2]} - ${s0[2]}) / $tot" 1)" %
  local d0 d1; read -r -a d0 <<<"${SNAP[disk]:-0 0}"; read -r -a d1 <<<"$(disk_stat || echo 0 0)"
  if [ -n "${d1[0]:-}" ]; then
    emit "${p}_disk_writes_per_s" "$(calc "(${d1[0]} - ${d0[0]}) / $wall" 0)" ops/s
    emit "${p}_disk_flushes_per_s" "$(calc "(${d1[1]} - ${d0[1]}) / $wall" 0)" ops/s
  fi
  emit "${p}_master_wal_mb" "$(psql_m -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '${SNAP[lsn]}') / 1e6, 2)")" MB
}

# wait_markers ID -> sets T_FULL, T_PART (epoch seconds when the marker became visible)
wait_markers() {
  psql_r full_rep -c "SELECT bench_wait_marker($1, $PHASE_TIMEOUT_S)" >"$TMP/w_full" &
  local p1=$!
  psql_r part_rep -c "SELECT bench_wait_marker($1, $PHASE_TIMEOUT_S)" >"$TMP/w_part" &
  local p2=$!
  WAIT_PIDS=("$p1" "$p2")
  wait "$p1" || die "full replicate did not catch up (marker $1)"
  wait "$p2" || die "partial replicate did not catch up (marker $1)"
  WAIT_PIDS=()
  T_FULL=$(cat "$TMP/w_full"); T_PART=$(cat "$TMP/w_part")
}
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

echo "# $PGVER; $(uname -sr); $(nproc) cpus; data directories on device $DISK ($(df --output=fstype "$TMP" | tail -1))"
echo "# N=$N B=$B M=$M M_PACED=$M_PACED PACE_MS=$PACE_MS; master synchronous_commit=on fsync=on;" \
     "subscription synchronous_commit=$( [ "$SUB_SYNC_COMMIT" = default ] && echo "default(off)" || echo "$SUB_SYNC_COMMIT")"
read -r -a _c0 <<<"$(sys_cpu)"; sleep 2; read -r -a _c1 <<<"$(sys_cpu)"
emit pre_machine_cpu_busy_pct "$(calc "100 * (${_c1[0]} - ${_c0[0]}) / (${_c1[4]} - ${_c0[4]} + 1)" 1)" %
emit config_n "$N" rows
emit config_b "$B" rows/txn

# ---------------------------------------------------------------- a. bulk
log "a. bulk insert: $N rows, $B rows per transaction"
snap_begin
T0=$(now)
psql_m <<SQL
DO \$\$
DECLARE lo bigint;
BEGIN
  FOR k IN 0 .. ($N + $B - 1) / $B - 1 LOOP
    lo := k::bigint * $B + 1;
    INSERT INTO items
      SELECT g, (g % 16)::int, 'item-' || g, (g % 1000)::int, round((g % 100000) / 100.0, 2), md5(g::text)
      FROM generate_series(lo, least(lo + $B - 1, $N)) g;
    COMMIT;
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (1, 'bulk');
SQL
T1=$(now)
wait_markers 1
TE=$(max "$T_FULL" "$T_PART")
WALL=$(calc "$TE - $T0")
emit a_master_insert_s "$(calc "$T1 - $T0")" s
emit a_master_rows_per_s "$(calc "$N / ($T1 - $T0)" 0)" rows/s
emit a_master_commits_per_s "$(calc "$(( (N + B - 1) / B + 1 )) / ($T1 - $T0)" 0)" commits/s
emit a_full_caught_up_s "$(calc "$T_FULL - $T0")" s
emit a_part_caught_up_s "$(calc "$T_PART - $T0")" s
emit a_e2e_s "$WALL" s
emit a_e2e_rows_per_s "$(calc "$N / $WALL" 0)" rows/s
emit a_tail_after_master_s "$(calc "$TE - $T1")" s
snap_end a "$WALL" 1 "$N"
CNT_M=$(psql_m -c "SELECT count(*) FROM items")
CNT_MP=$(psql_m -c "SELECT count(*) FROM items WHERE grp % 4 = 0")
CNT_F=$(psql_r full_rep -c "SELECT count(*) FROM items")
CNT_P=$(psql_r part_rep -c "SELECT count(*) FROM items")
[ "$CNT_F" = "$CNT_M" ] && [ "$CNT_P" = "$CNT_MP" ] ||
  die "bulk verification failed: master $CNT_M/$CNT_MP, full $CNT_F, part $CNT_P"
emit a_part_rows "$CNT_P" rows

# ---------------------------------------------------------------- c. initial sync
for kind in full part; do
  log "c. initial sync of a new $kind subscription (copy_data = true, $CNT_M rows on the master)"
  if [ $kind = full ]; then ddl=$FULL_DDL; else ddl=$PART_DDL; fi
  make_replica_db "sync_$kind" "$ddl"
  # The logical replication launcher starts apply workers at most once per
  # wal_retrieve_retry_interval (5 s default) and otherwise sleeps that long, so
  # a subscription created < 5 s after the previous one waits ~5 s for its
  # worker.  Let that window pass, so the figure is the copy, not the throttle
  # (c_*_worker_started_s below still shows the launch delay).
  gap=$(calc "5.2 - ($(now) - $LAST_WORKER_START)")
  if awk -v g="$gap" 'BEGIN { exit !(g > 0) }'; then sleep "$gap"; fi
  snap_begin
  T0=$(now)
  create_sub "sync_$kind" "sub_sync_$kind" "pub_$kind" "copy_data = true"
  TCS=$(now)
  TW=$(psql_r "sync_$kind" -c "SELECT bench_wait_worker('sub_sync_$kind', $PHASE_TIMEOUT_S)")
  LAST_WORKER_START=$TW
  TC=$(psql_r "sync_$kind" -c "SELECT bench_wait_sub_state('sub_sync_$kind', 'fsr', $PHASE_TIMEOUT_S)")
  TE=$(psql_r "sync_$kind" -c "SELECT bench_wait_sub_state('sub_sync_$kind', 'r', $PHASE_TIMEOUT_S)")
  WALL=$(calc "$TE - $T0")
  got=$(psql_r "sync_$kind" -c "SELECT count(*) FROM items")
  want=$CNT_M; [ $kind = part ] && want=$CNT_MP
  [ "$got" = "$want" ] || die "initial sync ($kind) copied $got rows, expected $want"
  emit "c_${kind}_create_subscription_s" "$(calc "$TCS - $T0")" s
  emit "c_${kind}_worker_started_s" "$(calc "$TW - $T0")" s
  emit "c_${kind}_initial_copy_committed_s" "$(calc "$TC - $T0")" s
  emit "c_${kind}_initial_sync_s" "$WALL" s
  emit "c_${kind}_initial_sync_rows" "$got" rows
  emit "c_${kind}_initial_sync_rows_per_s" "$(calc "$got / $WALL" 0)" rows/s
  snap_end "c_${kind}" "$WALL" 0 "$got"
  psql_r "sync_$kind" -c "DROP SUBSCRIPTION sub_sync_$kind"
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -h $HOST -p "$PORT_R" -U postgres -d postgres -c "DROP DATABASE sync_$kind"
done

# ---------------------------------------------------------------- a2. backlog drain
# Phase a is paced by the master's own commit rate.  To see what the
# replication path (decode + send + apply) can do on its own, block both apply
# workers (a session on each replicate holds an ACCESS EXCLUSIVE lock on
# items, so the worker waits at the first row of the backlog; the walsender
# then stops decoding once the socket buffers are full), commit another N rows
# on the master, release the locks and time how long the backlog takes to
# drain.  (Disabling and re-enabling the subscriptions would drag in the
# launcher's 5 s restart throttle.)
BULK2=100000000   # ids BULK2+1 .. BULK2+N
log "a2. backlog drain: apply blocked while $N rows are committed, then released"
declare -A HOLD
for kind in full part; do
  exec {fd}> >(psql_r ${kind}_rep >/dev/null)
  HOLD[$kind]=$fd
  WAIT_PIDS+=("$!")
  echo "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE;" >&"$fd"
done
for kind in full part; do
  for _ in $(seq 500); do
    [ "$(psql_r ${kind}_rep -c "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND mode = 'AccessExclusiveLock' AND granted")" = 1 ] && break
    sleep 0.01
  done
done
psql_m <<SQL
DO \$\$
DECLARE lo bigint;
BEGIN
  FOR k IN 0 .. ($N + $B - 1) / $B - 1 LOOP
    lo := $BULK2 + k::bigint * $B + 1;
    INSERT INTO items
      SELECT g, (g % 16)::int, 'item-' || g, (g % 1000)::int, round((g % 100000) / 100.0, 2), md5(g::text)
      FROM generate_series(lo, least(lo + $B - 1, $BULK2 + $N)) g;
    COMMIT;
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (10, 'backlog');
SQL
sleep 1   # let the walsenders fill the pipes as far as they will
snap_begin
T0=$(now)
for kind in full part; do
  fd=${HOLD[$kind]}
  echo "COMMIT;" >&"$fd"
  exec {fd}>&-
done
wait_markers 10
TE=$(max "$T_FULL" "$T_PART")
WALL=$(calc "$TE - $T0")
emit a2_full_drained_s "$(calc "$T_FULL - $T0")" s
emit a2_part_drained_s "$(calc "$T_PART - $T0")" s
emit a2_drain_s "$WALL" s
emit a2_drain_rows_per_s "$(calc "$N / $WALL" 0)" rows/s
emit a2_full_drain_rows_per_s "$(calc "$N / ($T_FULL - $T0)" 0)" rows/s
snap_end a2 "$WALL" 1 "$N"

# ---------------------------------------------------------------- b. commit-to-apply lag
for db in full_rep part_rep; do
  psql_r $db <<'SQL'
CREATE TRIGGER lag_trg AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION lag_trg_fn();
ALTER TABLE items ENABLE ALWAYS TRIGGER lag_trg;
SQL
done
LAG1=1000000000   # ids of the full-speed lag rows: LAG1+1 .. LAG1+M
LAG2=2000000000   # ids of the paced lag rows:      LAG2+1 .. LAG2+M_PACED

log "b. lag: $M single-row commits at full speed"
snap_begin
T0=$(now)
psql_m <<SQL
DO \$\$
BEGIN
  FOR i IN 1 .. $M LOOP
    INSERT INTO items VALUES ($LAG1 + i, 0, 'lag', i, 0, 'lag');
    COMMIT;
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (2, 'lag');
SQL
T1=$(now)
wait_markers 2
TE=$(max "$T_FULL" "$T_PART")
WALL=$(calc "$TE - $T0")
emit b_master_commits_per_s "$(calc "$M / ($T1 - $T0)" 0)" commits/s
emit b_e2e_s "$WALL" s
snap_end b "$WALL" 1 "$M"

if [ "$M_PACED" -gt 0 ]; then
  log "b. lag: $M_PACED single-row commits, one every $PACE_MS ms"
  psql_m <<SQL
DO \$\$
BEGIN
  FOR i IN 1 .. $M_PACED LOOP
    INSERT INTO items VALUES ($LAG2 + i, 0, 'lag', i, 0, 'lag');
    COMMIT;
    PERFORM pg_sleep($PACE_MS / 1000.0);
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (3, 'lag_paced');
SQL
  wait_markers 3
fi

psql_m -c "COPY (SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM items WHERE id > $LAG1) TO STDOUT" >"$TMP/lag_src.tsv"
for kind in full part; do
  psql_r ${kind}_rep -c "\\copy lag_src FROM '$TMP/lag_src.tsv'"
  for set in full_speed paced; do
    if [ $set = full_speed ]; then lo=$LAG1; hi=$((LAG1 + M)); else lo=$LAG2; hi=$((LAG2 + M_PACED)); fi
    [ $set = paced ] && [ "$M_PACED" = 0 ] && continue
    read -r cnt p50 p90 p99 pmax < <(psql_r ${kind}_rep -F ' ' -c "
      SELECT count(*),
             round(percentile_cont(0.50) WITHIN GROUP (ORDER BY ms)::numeric, 3),
             round(percentile_cont(0.90) WITHIN GROUP (ORDER BY ms)::numeric, 3),
             round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3),
             round(max(ms)::numeric, 3)
      FROM (SELECT ((extract(epoch FROM l.applied_at) - s.commit_epoch) * 1000)::float8 AS ms
            FROM lag_log l JOIN lag_src s USING (id)
            WHERE s.id > $lo AND s.id <= $hi) x")
    want=$M; [ $set = paced ] && want=$M_PACED
    [ "$cnt" = "$want" ] || die "lag ($kind/$set): $cnt samples, expected $want"
    emit "b_${set}_${kind}_lag_p50_ms" "$p50" ms
    emit "b_${set}_${kind}_lag_p90_ms" "$p90" ms
    emit "b_${set}_${kind}_lag_p99_ms" "$p99" ms
    emit "b_${set}_${kind}_lag_max_ms" "$pmax" ms
  done
  psql_r ${kind}_rep -c "DROP TRIGGER lag_trg ON items"
done

# ---------------------------------------------------------------- d. updates and deletes
U=$((N / 10))
log "d. $U updates then $U deletes, $B rows per transaction"
snap_begin
T0=$(now)
psql_m <<SQL
DO \$\$
DECLARE lo bigint;
BEGIN
  FOR k IN 0 .. ($U + $B - 1) / $B - 1 LOOP
    lo := k::bigint * $B + 1;
    UPDATE items SET qty = qty + 1, note = 'updated' WHERE id BETWEEN lo AND least(lo + $B - 1, $U);
    COMMIT;
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (4, 'update');
SQL
T1=$(now)
wait_markers 4
TE=$(max "$T_FULL" "$T_PART")
WALL=$(calc "$TE - $T0")
emit d_update_rows "$U" rows
emit d_update_master_s "$(calc "$T1 - $T0")" s
emit d_update_full_caught_up_s "$(calc "$T_FULL - $T0")" s
emit d_update_part_caught_up_s "$(calc "$T_PART - $T0")" s
emit d_update_e2e_s "$WALL" s
emit d_update_e2e_rows_per_s "$(calc "$U / $WALL" 0)" rows/s
snap_end d_update "$WALL" 1 "$U"

snap_begin
T0=$(now)
psql_m <<SQL
DO \$\$
DECLARE lo bigint;
BEGIN
  FOR k IN 0 .. ($U + $B - 1) / $B - 1 LOOP
    lo := $U + k::bigint * $B + 1;
    DELETE FROM items WHERE id BETWEEN lo AND least(lo + $B - 1, 2 * $U);
    COMMIT;
  END LOOP;
END \$\$;
INSERT INTO bench_marker VALUES (5, 'delete');
SQL
T1=$(now)
wait_markers 5
TE=$(max "$T_FULL" "$T_PART")
WALL=$(calc "$TE - $T0")
emit d_delete_rows "$U" rows
emit d_delete_master_s "$(calc "$T1 - $T0")" s
emit d_delete_full_caught_up_s "$(calc "$T_FULL - $T0")" s
emit d_delete_part_caught_up_s "$(calc "$T_PART - $T0")" s
emit d_delete_e2e_s "$WALL" s
emit d_delete_e2e_rows_per_s "$(calc "$U / $WALL" 0)" rows/s
snap_end d_delete "$WALL" 1 "$U"

# ---------------------------------------------------------------- final verification
V_M=$(psql_m -c "SELECT count(*) || ':' || sum(qty) || ':' || sum(id) FROM items")
V_MP=$(psql_m -c "SELECT count(*) || ':' || sum(qty) || ':' || sum(id) FROM items WHERE grp % 4 = 0")
V_F=$(psql_r full_rep -c "SELECT count(*) || ':' || sum(qty) || ':' || sum(id) FROM items")
V_P=$(psql_r part_rep -c "SELECT count(*) || ':' || sum(qty) || ':' || sum(id) FROM items")
V_FH=$(psql_r full_rep -c "SELECT md5(string_agg(id || ',' || grp || ',' || name || ',' || qty || ',' || price || ',' || note, ';' ORDER BY id)) FROM items")
V_MH=$(psql_m -c "SELECT md5(string_agg(id || ',' || grp || ',' || name || ',' || qty || ',' || price || ',' || note, ';' ORDER BY id)) FROM items")
ok_f=0; ok_p=0
[ "$V_F" = "$V_M" ] && [ "$V_FH" = "$V_MH" ] && ok_f=1
[ "$V_P" = "$V_MP" ] && ok_p=1
emit verify_full_identical "$ok_f" bool
emit verify_part_identical "$ok_p" bool
[ $ok_f = 1 ] && [ $ok_p = 1 ] || die "final verification failed: master $V_M / $V_MP, full $V_F, part $V_P"
log "done; tearing down"
