#!/usr/bin/env python3
"""For each commit of phase b's paced set (or `full_speed`) whose lag to
either replicate passed MS (1.5) ms: how long each thread ran on a CPU in
its window, from what `paced.sh` recorded. Both cores mostly idle in a
slow commit's window means it waited for the device, not for a core.

    python3 bench/tails/paced.py /tmp/paced [paced|full_speed] [MS]
"""
import sys
from schedruns import Runs
d=sys.argv[1]; set_=sys.argv[2] if len(sys.argv)>2 else 'paced'; thr=float(sys.argv[3]) if len(sys.argv)>3 else 1.5
win=Runs(d).window
full=[list(map(int,l.split())) for l in open(d+'/lag-bench_full-%s.txt'%set_)]
part={r[0]:r for r in (list(map(int,l.split())) for l in open(d+'/lag-bench_part-%s.txt'%set_))}
s0=full[0][0]-1
for r in full:
    p=part[r[0]]; lag=max(r[2],p[2])-r[1]
    if lag<thr*1000: continue
    a=r[1]/1e6; b=a+lag/1e6
    acc=win(a-0.002,b); tot=sum(acc.values())
    print("%d: lag %.2f/%.2f ms busy %.1fms: %s"%(r[0]-s0,(r[2]-r[1])/1000,(p[2]-p[1])/1000,tot*1e3,", ".join("%s %.2f"%(k,v*1e3) for k,v in acc.most_common(7))))
