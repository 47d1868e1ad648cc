#!/usr/bin/env python3
"""Each thread's CPU time in 50 ms windows around the start of phase b, from
what `settle.sh` recorded, and the slow commits (over 1 ms) of its first
300 to the full replicate:

    python3 bench/tails/settle.py /tmp/settle
"""
import re,sys,collections
d=sys.argv[1]
off=float(open(d+'/offset.txt').read())
pat=re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)')
runs=[]; cur={}; tid2=dict()
for l in open(d+'/sched.txt'):
    m=pat.match(l)
    if not m: continue
    comm,pid,tid,cpu,t,pc,pp,st,nc,npid=m.groups()
    t=float(t)+off; cpu=int(cpu)
    tid2[int(tid)]=(comm,int(pid))
    if cpu in cur:
        s,ntid,ncomm=cur[cpu]; runs.append((s,t,ntid,ncomm,cpu))
    cur[cpu]=(t,int(npid),nc)
rows=[list(map(int,l.split())) for l in open(d+'/lag-bench_full-full_speed.txt')]
b0=rows[0][1]/1e6
pids={}
for tid,(c,p) in tid2.items(): pids[tid]=p
def win(a,b):
    acc=collections.Counter()
    for s,e,tid,comm,cpu in runs:
        x=max(s,a); y=min(e,b)
        if y>x and tid!=0:
            acc["%s/%s"%(comm,pids.get(tid,'?'))]+=y-x
    return acc
for (a,b) in [(-0.3,-0.2),(-0.2,-0.1),(-0.1,0),(0,0.05),(0.05,0.1),(0.1,0.15),(0.15,0.2),(0.5,0.6)]:
    acc=win(b0+a,b0+b); tot=sum(acc.values())
    print("[%+.2f,%+.2f] busy %.0f%% of 2 cpus:"%(a,b,tot/(2*(b-a))*100), ", ".join("%s %.1fms"%(k,v*1e3) for k,v in acc.most_common(8)))
s0=rows[0][0]-1
print("slow early:"," ".join("%d:%.1f"%(r[0]-s0,(r[2]-r[1])/1000) for r in rows if r[2]-r[1]>1000 and r[0]-s0<300))
