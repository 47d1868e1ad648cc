#!/usr/bin/env bash
# bench/limits.sh -- physical limits of this machine, as `metric value unit` lines.
#
#   bash bench/limits.sh
#
# Measures, on the disk that holds BENCH_TMPDIR (default: $TMPDIR or /tmp, the same
# place bench/pg_peer.sh puts its clusters):
#   - fdatasync rate for small appends (file grows: data + metadata/journal per sync)
#   - fdatasync rate for 8 KiB overwrites in a preallocated file (what PostgreSQL's WAL
#     does: segments are pre-zeroed, so a commit is an in-place write + fdatasync)
#   - fdatasync rate for 64 KiB appends (how much a bigger group commit costs)
#   - sequential write MB/s including the final fsync
# and on the loopback interface (127.0.0.1 only):
#   - TCP bulk throughput with iperf3 (installed from Debian if missing), 5 s
#   - TCP request/response round trip (1 outstanding 64-byte message, TCP_NODELAY)
#
# Env: BENCH_TMPDIR, FSYNC_SECONDS (3), SEQ_MB (1024), IPERF_SECONDS (5),
#      IPERF_PORT (55201), RTT_SECONDS (2), RTT_PORT (55202)
set -euo pipefail
export LC_ALL=C

BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
FSYNC_SECONDS=${FSYNC_SECONDS:-3}
SEQ_MB=${SEQ_MB:-1024}
IPERF_SECONDS=${IPERF_SECONDS:-5}
IPERF_PORT=${IPERF_PORT:-55201}
RTT_SECONDS=${RTT_SECONDS:-2}
RTT_PORT=${RTT_PORT:-55202}

die() { echo "limits.sh: $*" >&2; exit 1; }

apt_install() { # apt_install PKG... (Debian packages, only when missing)
  [ "$(id -u)" = 0 ] || die "need root to install $*"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

command -v python3 >/dev/null 2>&1 || apt_install python3
command -v iperf3 >/dev/null 2>&1 || apt_install iperf3

WORK=$(mktemp -d "$BENCH_TMPDIR/limits.XXXXXX")
IPERF_PID=
cleanup() {
  if [ -n "$IPERF_PID" ] && kill -0 "$IPERF_PID" 2>/dev/null; then kill "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "# limits.sh on $(uname -sr), $(nproc) cpus, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "# disk: device $(basename "$(df --output=source "$WORK" | tail -1)") ($(df --output=fstype "$WORK" | tail -1))"
echo "# python: $(python3 --version 2>&1), iperf3: $(iperf3 --version 2>&1 | head -1)"

# ---------------------------------------------------------------- disk
python3 - "$WORK" "$FSYNC_SECONDS" "$SEQ_MB" <<'PY'
import os, sys, time
work, dur, seq_mb = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]

def emit(name, value, unit):
    print(f"{name} {value} {unit}", flush=True)

def fsync_loop(name, size, prealloc):
    path = os.path.join(work, name + ".dat")
    buf = os.urandom(size)
    if prealloc:
        # like a PostgreSQL WAL segment: written and synced once, then overwritten in place
        seg = 16 * 1024 * 1024
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"\0" * seg)
        os.fsync(fd)
        limit = seg // size
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        limit = None
    lat = []
    i = 0
    t0 = time.perf_counter()
    end = t0 + dur
    while True:
        a = time.perf_counter()
        if prealloc:
            os.pwrite(fd, buf, (i % limit) * size)
        else:
            os.write(fd, buf)
        os.fdatasync(fd)
        b = time.perf_counter()
        lat.append(b - a)
        i += 1
        if b >= end:
            break
    el = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    emit(f"{name}_per_s", f"{i / el:.0f}", "ops/s")
    emit(f"{name}_p50_us", f"{pct(lat, 0.50) * 1e6:.0f}", "us")
    emit(f"{name}_p99_us", f"{pct(lat, 0.99) * 1e6:.0f}", "us")
    if size >= 65536:
        emit(f"{name}_mb_per_s", f"{i * size / el / 1e6:.1f}", "MB/s")

fsync_loop("fsync_append_512b", 512, False)
fsync_loop("fsync_append_4k", 4096, False)
fsync_loop("fsync_overwrite_8k", 8192, True)
fsync_loop("fsync_append_64k", 65536, False)

# sequential write of seq_mb MiB of incompressible data, then one fsync
path = os.path.join(work, "seq.dat")
chunk = os.urandom(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t0 = time.perf_counter()
for _ in range(seq_mb):
    os.write(fd, chunk)
t1 = time.perf_counter()
os.fsync(fd)
t2 = time.perf_counter()
os.close(fd)
os.unlink(path)
mb = seq_mb * (1 << 20) / 1e6
emit("seq_write_mb_per_s", f"{mb / (t2 - t0):.0f}", "MB/s")
emit("seq_write_pagecache_mb_per_s", f"{mb / (t1 - t0):.0f}", "MB/s")
emit("seq_write_final_fsync_s", f"{t2 - t1:.3f}", "s")
emit("seq_write_size_mb", f"{mb:.0f}", "MB")
PY

# ---------------------------------------------------------------- loopback TCP
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" -1 >"$WORK/iperf_server.log" 2>&1 &
IPERF_PID=$!
for _ in $(seq 100); do
  ss -ltn 2>/dev/null | grep -q "127.0.0.1:$IPERF_PORT " && break
  sleep 0.05
done
iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$IPERF_SECONDS" -J >"$WORK/iperf.json"
wait "$IPERF_PID" 2>/dev/null || true
IPERF_PID=
python3 - "$WORK/iperf.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["end"]
print(f"tcp_loopback_gbit_per_s {e['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s")
print(f"tcp_loopback_mb_per_s {e['sum_received']['bytes'] / e['sum_received']['seconds'] / 1e6:.0f} MB/s")
cpu = e.get("cpu_utilization_percent", {})
if cpu:
    print(f"tcp_loopback_sender_cpu_pct {cpu.get('host_total', 0):.0f} %")
PY

python3 - "$RTT_PORT" "$RTT_SECONDS" <<'PY'
import os, socket, sys, time
port, dur = int(sys.argv[1]), float(sys.argv[2])
MSG = 64
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
pid = os.fork()
if pid == 0:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(MSG, socket.MSG_WAITALL)
        if not b:
            break
        c.sendall(b)
    os._exit(0)
srv.close()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * MSG
lat = []
t0 = time.perf_counter()
end = t0 + dur
while True:
    a = time.perf_counter()
    s.sendall(msg)
    got = s.recv(MSG, socket.MSG_WAITALL)
    b = time.perf_counter()
    assert len(got) == MSG
    lat.append(b - a)
    if b >= end:
        break
el = time.perf_counter() - t0
s.close()
os.waitpid(pid, 0)
lat.sort()
print(f"tcp_loopback_rtt_per_s {len(lat) / el:.0f} roundtrips/s")
print(f"tcp_loopback_rtt_p50_us {lat[len(lat) // 2] * 1e6:.1f} us")
print(f"tcp_loopback_rtt_p99_us {lat[int(len(lat) * 0.99)] * 1e6:.1f} us")
PY
