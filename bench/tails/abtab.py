#!/usr/bin/env python3
"""Each figure of the runs `ab.sh` kept, per binary (b1, b2, ...):

    python3 bench/tails/abtab.py /tmp/ab [metric,metric,...]
"""
import sys,glob,re,collections
out=sys.argv[1]
keys=sys.argv[2].split(',') if len(sys.argv)>2 else ['a_e2e_rows_per_s','a2_drain_rows_per_s','d_update_e2e_rows_per_s','d_delete_e2e_rows_per_s','b_full_speed_full_lag_p50_ms','b_full_speed_full_lag_p99_ms','b_full_speed_part_lag_p99_ms','b_paced_full_lag_p50_ms','b_paced_full_lag_p99_ms','b_paced_part_lag_p99_ms','b_master_commits_per_s','c_full_initial_sync_rows_per_s','c_part_initial_sync_rows_per_s']
vals=collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob(out+'/r*-b*.txt')):
    b=re.search(r'-b(\d+)',f).group(1)
    for l in open(f):
        p=l.split()
        if len(p)>=2 and p[0] in keys: vals[p[0]][b].append(float(p[1]))
bs=sorted({b for k in vals for b in vals[k]})
for k in keys:
    print("%-34s"%k, "  ".join("b%s: %s"%(b," ".join("%g"%v for v in vals[k][b])) for b in bs))
