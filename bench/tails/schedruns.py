"""What `settle.sh` and `paced.sh` recorded (perf's sched_switch events in
DIR/sched.txt, DIR/offset.txt turning its monotonic clock into wall-clock
seconds): each stretch a thread ran on a CPU, and each thread's run time
in a window. Shared by settle.py and paced.py."""
import collections, re

_PAT = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)')


class Runs:
    def __init__(self, d):
        off = float(open(d + '/offset.txt').read())
        self.runs = []  # (start, end, tid, comm, cpu), wall-clock seconds
        cur, self.pids = {}, {}
        for l in open(d + '/sched.txt'):
            m = _PAT.match(l)
            if not m:
                continue
            comm, pid, tid, cpu, t, _pc, _pp, _st, nc, npid = m.groups()
            t = float(t) + off
            cpu = int(cpu)
            self.pids[int(tid)] = int(pid)
            if cpu in cur:
                s, ntid, ncomm = cur[cpu]
                self.runs.append((s, t, ntid, ncomm, cpu))
            cur[cpu] = (t, int(npid), nc)

    def window(self, a, b):
        """Seconds each thread (`comm/pid`) ran between a and b."""
        acc = collections.Counter()
        for s, e, tid, comm, _cpu in self.runs:
            x, y = max(s, a), min(e, b)
            if y > x and tid != 0:
                acc["%s/%s" % (comm, self.pids.get(tid, '?'))] += y - x
        return acc
