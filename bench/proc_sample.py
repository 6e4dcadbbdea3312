"""Sample a process tree's memory and CPU while a benchmark runs.

    proc_sample.py --pid PID --name gateway --out FILE

Every 50 ms it sums VmRSS over PID and its descendants (a worker's
transcription children included) and keeps the peak. On SIGTERM or SIGINT it
writes JSON: RSS at start, peak RSS of the tree, peak of the process alone,
and the CPU seconds the process used in between (its own plus the children
it has reaped). Linux /proc only.
"""

import argparse
import json
import os
import signal
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def tree(pid):
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 (1-based) of the line;
    # after the command name they start at index 11.
    return sum(int(x) for x in fields[11:15]) / TICK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    start_rss = rss_kib(a.pid)
    start_cpu = cpu_seconds(a.pid)
    started = time.monotonic()
    peak_tree = peak_self = start_rss
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    last_cpu = start_cpu
    while not stop:
        self_rss = rss_kib(a.pid)
        if self_rss == 0:
            break
        peak_self = max(peak_self, self_rss)
        peak_tree = max(peak_tree, sum(rss_kib(p) for p in tree(a.pid)))
        try:
            last_cpu = cpu_seconds(a.pid)
        except OSError:
            break
        time.sleep(0.05)
    out = {
        "name": a.name,
        "seconds": round(time.monotonic() - started, 1),
        "rss_start_mib": round(start_rss / 1024, 1),
        "rss_peak_mib": round(peak_self / 1024, 1),
        "tree_rss_peak_mib": round(peak_tree / 1024, 1),
        "cpu_seconds": round(last_cpu - start_cpu, 2),
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
    sys.exit(0)


if __name__ == "__main__":
    main()
