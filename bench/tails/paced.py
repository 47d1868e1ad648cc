#!/usr/bin/env python3
"""For each commit of phase b's paced set (or `full_speed`) whose lag to
either replicate passed MS (1.5) ms: how long each thread ran on a CPU in
its window, from what `paced.sh` recorded. Both cores mostly idle in a
slow commit's window means it waited for the device, not for a core.

    python3 bench/tails/paced.py /tmp/paced [paced|full_speed] [MS]
"""
import re,sys,collections
d=sys.argv[1]; set_=sys.argv[2] if len(sys.argv)>2 else 'paced'; thr=float(sys.argv[3]) if len(sys.argv)>3 else 1.5
off=float(open(d+'/offset.txt').read())
pat=re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)')
runs=[]; cur={}; tid2={}
for l in open(d+'/sched.txt'):
    m=pat.match(l)
    if not m: continue
    comm,pid,tid,cpu,t,pc,pp,st,nc,npid=m.groups()
    t=float(t)+off; cpu=int(cpu)
    tid2[int(tid)]=(comm,int(pid))
    if cpu in cur:
        s,ntid,ncomm=cur[cpu]; runs.append((s,t,ntid,ncomm,cpu))
    cur[cpu]=(t,int(npid),nc)
pids={tid:p for tid,(c,p) in tid2.items()}
def win(a,b):
    acc=collections.Counter()
    for s,e,tid,comm,cpu in runs:
        x=max(s,a); y=min(e,b)
        if y>x and tid!=0: acc["%s/%s"%(comm,pids.get(tid,'?'))]+=y-x
    return acc
full=[list(map(int,l.split())) for l in open(d+'/lag-bench_full-%s.txt'%set_)]
part={r[0]:r for r in (list(map(int,l.split())) for l in open(d+'/lag-bench_part-%s.txt'%set_))}
s0=full[0][0]-1
for r in full:
    p=part[r[0]]; lag=max(r[2],p[2])-r[1]
    if lag<thr*1000: continue
    a=r[1]/1e6; b=a+lag/1e6
    acc=win(a-0.002,b); tot=sum(acc.values())
    print("%d: lag %.2f/%.2f ms busy %.1fms: %s"%(r[0]-s0,(r[2]-r[1])/1000,(p[2]-p[1])/1000,tot*1e3,", ".join("%s %.2f"%(k,v*1e3) for k,v in acc.most_common(7))))
