#!/usr/bin/env python3
"""Each thread's CPU time in 50 ms windows around the start of phase b, from
what `settle.sh` recorded, and the slow commits (over 1 ms) of its first
300 to the full replicate:

    python3 bench/tails/settle.py /tmp/settle
"""
import sys
from schedruns import Runs
d=sys.argv[1]
runs=Runs(d)
rows=[list(map(int,l.split())) for l in open(d+'/lag-bench_full-full_speed.txt')]
b0=rows[0][1]/1e6
win=runs.window
for (a,b) in [(-0.3,-0.2),(-0.2,-0.1),(-0.1,0),(0,0.05),(0.05,0.1),(0.1,0.15),(0.15,0.2),(0.5,0.6)]:
    acc=win(b0+a,b0+b); tot=sum(acc.values())
    print("[%+.2f,%+.2f] busy %.0f%% of 2 cpus:"%(a,b,tot/(2*(b-a))*100), ", ".join("%s %.1fms"%(k,v*1e3) for k,v in acc.most_common(8)))
s0=rows[0][0]-1
print("slow early:"," ".join("%d:%.1f"%(r[0]-s0,(r[2]-r[1])/1000) for r in rows if r[2]-r[1]>1000 and r[0]-s0<300))
