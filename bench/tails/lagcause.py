#!/usr/bin/env python3
"""For each commit of phase b's full-speed set (with a second argument
`paced`: of the paced set), numbered from 1, whose lag (to either
replicate) passed 1 ms: the master's syncs in its window, the run-queue
waits over 0.3 ms, and a class: 'fsync' (the master's sync took most of it),
'runq' (a thread waited over 0.5 ms for a core) or 'other'.

    python3 bench/tails/lagcause.py /tmp/lagb [paced]
"""
import bisect, collections, sys

d = sys.argv[1]
set_ = sys.argv[2] if len(sys.argv) > 2 else 'full_speed'
off = float(open(d + '/offset.txt').read())
ev = []
for line in open(d + '/bt.txt'):
    p = line.split()
    if p and p[0] in ('F', 'B', 'R'):
        ev.append((int(p[1]) / 1e9 + off, p))
ev.sort(key=lambda e: e[0])
ts = [e[0] for e in ev]
# The master is the process with the most syncs.
master = collections.Counter(p[2] for _, p in ev if p[0] == 'F').most_common(1)[0][0]
def load(name):
    return {int(l.split()[0]): l.split() for l in open(d + '/' + name)}
full, part = load('lag-bench_full-%s.txt' % set_), load('lag-bench_part-%s.txt' % set_)
classes = collections.Counter()
first_seq = min(full)
for s in sorted(full):
    m = int(full[s][1]) / 1e6
    lf, lp = int(full[s][2]) / 1e6 - m, int(part[s][2]) / 1e6 - m
    lag = max(lf, lp)
    if lag < 0.001:
        continue
    i, j = bisect.bisect_left(ts, m), bisect.bisect_right(ts, m + lag)
    syncs = [int(p[5]) / 1e6 for t, p in ev[i:j]
             if p[0] == 'F' and p[2] == master and t - int(p[5]) / 1e9 >= m - 0.0002]
    waits = [(p[3][:14], int(p[4]) / 1e6) for t, p in ev[i:j] if p[0] == 'R']
    writes = collections.Counter()
    for t, p in ev[i:j]:
        if p[0] == 'B' and 'W' in p[2]:
            writes[p[4]] += int(p[3]) * 512
    big = {k: v >> 20 for k, v in writes.items() if v >= 1 << 20}
    first = syncs[0] if syncs else 0
    k = ('fsync' if first > 0.6 * lag * 1e3
         else 'runq' if waits and max(w for _, w in waits) > 0.5 else 'other')
    classes[k] += 1
    print('%d: full %.2f part %.2f ms | master syncs %s | run-queue waits %s | writes >= 1 MiB %s'
          % (s - first_seq + 1, lf * 1e3, lp * 1e3, ['%.2f' % x for x in syncs[:3]], waits[:4], big))
print(dict(classes))
