#!/usr/bin/env python3
"""Mutex waits over 0.5 ms during phase b, per thread name, from what
lockwait.sh recorded:  python3 bench/tails/lockwait.py /tmp/lw [...]"""
import sys,glob,collections
for d in sys.argv[1:]:
    off=float(open(d+'/offset.txt').read())
    f=sorted(glob.glob(d+'/lag-bench_full-*.txt'))
    rows=[list(map(int,l.split())) for fn in f for l in open(fn)]
    b0=min(r[1] for r in rows)/1e6; b1=max(r[2] for r in rows)/1e6
    w=[(int(p[1])/1e9+off,p[4],int(p[5])/1e6) for p in (l.split() for l in open(d+'/bt.txt')) if p and p[0]=='W']
    inb=[x for x in w if b0<=x[0]<=b1]
    c=collections.Counter(x[1] for x in inb)
    print(d,"phase b lock waits >0.5ms:",len(inb),dict(c),"max %.2f"%max([x[2] for x in inb] or [0]),"sum %.1f ms"%sum(x[2] for x in inb))
