#!/usr/bin/env python3
"""summary.py BOARD-RESULTS-DIR... — one Markdown table over the campaigns that cells.sh left in
each board results dir (lin-CONDITION/runs.jsonl, traffic-*.txt; the dir's name says gupbug
or fixed): per kernel,
condition and policy, the VMs terminated by a failed pin with a Wilson 95% interval, what else
happened (anything but `completed`/`terminated` makes a cell untrustworthy and is shown), the
pgmigrate_fail total, the failing IPAs and the median time to the guest's result line.
Runs of the same kernel, condition and policy from several dirs are pooled."""
import glob, json, math, os, re, statistics, sys
from collections import defaultdict


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def kernel_of(d):
    """The board kernel: named by the results dir (board.env has only the release, 7.3.4 for both)."""
    m = re.search(r"(gupbug|fixed)", os.path.basename(os.path.normpath(d)))
    return "7.3.4 " + (m.group(1) if m else "?")


cells = defaultdict(list)
commits = set()
for d in sys.argv[1:]:
    kern = kernel_of(d)
    for rj in sorted(glob.glob(os.path.join(d, "lin-*", "runs.jsonl"))):
        cond = os.path.basename(os.path.dirname(rj))[4:]
        for line in open(rj):
            r = json.loads(line)
            cells[(kern, cond, r["policy"])].append(r)
            commits.add((r.get("git_commit"), r.get("git_dirty")))

order = {"warm": 0, "cold": 9}
def ckey(c):
    m = re.match(r"(anon|file)-(\d+)", c)
    return (order.get(c, 1), int(m.group(2)) if m else 0, c)
pol_order = {"none": 0, "lru-add-drain": 1, "mlock-drain": 2, "retry": 3}

print("| kernel | condition | policy | terminated / runs [95% CI] | other outcomes | pgmigrate_fail | failing IPAs | loader tail: a page in an mlock batch and on the LRU | failed pins survived (retry) | result line s (median) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (kern, cond, pol) in sorted(cells, key=lambda k: (k[0], ckey(k[1]), pol_order.get(k[2], 9))):
    rs = cells[(kern, cond, pol)]
    n = len(rs)
    t = sum(1 for r in rs if r["outcome"] == "terminated")
    lo, hi = wilson(t, n)
    other = defaultdict(int)
    for r in rs:
        if r["outcome"] not in ("completed", "terminated"):
            other[r["outcome"]] += 1
        elif r["outcome"] == "terminated" and r.get("termination_errno") not in (None, "ENOMEM", "EFAULT"):
            other["errno " + str(r.get("termination_errno"))] += 1
    pmf = sum(r.get("vmstat_delta", {}).get("pgmigrate_fail", 0) for r in rs)
    # pKVM's EFAULT carries no IPA: the failing page is the one the explanation found
    gpas = sorted({hex(f["gpa"]) for r in rs for f in (r.get("failures") or []) if f.get("gpa") is not None})
    tail = sum(1 for r in rs if r.get("loader_tail_pending_on_lru"))
    # survived failed pins: protected VMs count KVM_RUN EFAULTs that retry got past
    retried = sum(1 for r in rs for f in (r.get("failures") or []) if f.get("outcome") == "retried")
    rl = [r["result_line_ms"] / 1000 for r in rs if r.get("result_line_ms")]
    print(f"| {kern} | {cond} | {pol} | **{t}/{n}** [{100*lo:.1f}, {100*hi:.1f}]% | "
          f"{', '.join(f'{v} {k}' for k, v in sorted(other.items())) or '-'} | {pmf} | "
          f"{', '.join(gpas) or '-'} | {tail}/{n} | {retried} | {statistics.median(rl):.1f} |" if rl else
          f"| {kern} | {cond} | {pol} | **{t}/{n}** [{100*lo:.1f}, {100*hi:.1f}]% | "
          f"{', '.join(f'{v} {k}' for k, v in sorted(other.items())) or '-'} | {pmf} | "
          f"{', '.join(gpas) or '-'} | {tail}/{n} | {retried} | - |")
print()
print("Pooled over the conditions:")
print()
print("| kernel | policy | terminated / runs [95% CI] | other outcomes |")
print("|---|---|---|---|")
pooled = defaultdict(list)
for (kern, cond, pol), rs in cells.items():
    pooled[(kern, pol)].extend(rs)
for (kern, pol) in sorted(pooled, key=lambda k: (k[0], pol_order.get(k[1], 9))):
    rs = pooled[(kern, pol)]
    n = len(rs)
    t = sum(1 for r in rs if r["outcome"] == "terminated")
    lo, hi = wilson(t, n)
    o = sum(1 for r in rs if r["outcome"] not in ("completed", "terminated"))
    print(f"| {kern} | {pol} | **{t}/{n}** [{100*lo:.1f}, {100*hi:.1f}]% | {o or '-'} |")
print()
print("binaries:", ", ".join(f"{c}{' (dirty)' if dirty else ''}" for c, dirty in sorted(commits, key=str)))
for d in sys.argv[1:]:
    for tf in sorted(glob.glob(os.path.join(d, "traffic-*.txt"))):
        tail = open(tf).read().strip().splitlines()[-1:] or [""]
        print(f"{os.path.basename(os.path.normpath(d))}/{os.path.basename(tf)}: {tail[0]}")
