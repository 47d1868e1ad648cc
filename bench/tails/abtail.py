#!/usr/bin/env python3
"""Counts, for each run `ab.sh` kept, the lag samples over 1 and 2 ms in
phase b's full-speed set and its paced set.

    python3 bench/tails/abtail.py /tmp/ab
"""
import glob, re, sys

for d in sorted(glob.glob(sys.argv[1] + '/lag-r*-b*')):
    counts = {}
    for f in glob.glob(d + '/lag-*.txt'):
        kind = 'fast' if f.endswith('full_speed.txt') else 'paced'
        for line in open(f):
            _, m, v, _ = map(int, line.split())
            lag = (v - m) / 1000
            for k, hit in (('n', True), ('>1ms', lag > 1), ('>2ms', lag > 2)):
                counts[kind + k] = counts.get(kind + k, 0) + hit
    print(re.sub(r'.*/lag-', '', d), ' '.join('%s=%d' % kv for kv in sorted(counts.items())))
