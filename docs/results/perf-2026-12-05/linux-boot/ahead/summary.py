#!/usr/bin/env python3
"""Table of linux-boot.sh's reports: python3 summary.py DIR (DIR holds boot-PATH-ROUND.json).

Per boot: seconds from launch to the verified result line, the ratio to the same round's
`kernel` boot, pinvmm's exit code and the guest's verdict, the model, and from the resolver:
faults (minor/missing), pins, pages ahead, hand-offs to the fault CPU, resolve/pin means,
drains, pgmigrate counts, and the pin thread's run time and run-queue wait."""
import glob
import json
import os
import re
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "."
rows = []
for f in glob.glob(os.path.join(d, "boot-*.json")):
    m = re.match(r"boot-(.+)-(\d+)\.json$", os.path.basename(f))
    rows.append((m.group(1), int(m.group(2)), json.load(open(f))))
order = ["kernel", "uffd", "exact", "touch", "huge", "ahead", "ahead63", "uffdahead"]
def rank(p):
    if p in order:
        return (order.index(p), 0)
    if re.fullmatch(r"ahead\d+", p):
        return (order.index("ahead63"), int(p[5:]))
    return (99, 0)


rows.sort(key=lambda r: (rank(r[0]), r[1]))
kernel_s = {
    rnd: rep["linux"]["result_line_ms"] / 1e3
    for p, rnd, rep in rows
    if p == "kernel" and rep.get("linux") and rep["linux"].get("result_line_ms")
}
print("| path | round | s to result | / kernel | exit | verified | model | faults (minor/missing) "
      "| pins ok | pages ahead | hand-offs | resolve mean us | pin mean us (p50) | drains (ms) "
      "| pgmigrate ok/fail | pin thread run / runq wait s | commit |")
print("|" + "---|" * 17)
for p, rnd, rep in rows:
    lx = rep.get("linux") or {}
    ms = lx.get("result_line_ms")
    s = ms / 1e3 if ms else None
    ratio = f"{s / kernel_s[rnd]:.2f}x" if s and rnd in kernel_s else "-"
    r = rep.get("resolver")
    vm = rep.get("vmstat_delta", {})
    b = rep.get("build", {})
    commit = f"{b.get('git_commit', '?')}{' dirty' if b.get('git_dirty') else ''}"
    if r:
        pin = next((t for t in r["threads"] if t["thread"] == "pin"), None)
        sched = f"{pin['run_ns'] / 1e9:.1f} / {pin['runq_wait_ns'] / 1e9:.1f}" if pin else "-"
        res = (f"{r['faults']} ({r['minor_faults']}/{r['missing_faults']}) | {r['pins']['ok']} | "
               f"{r['pages_ahead']} | {r['fault_cpu_handoffs']} | "
               f"{r['resolve_latency']['mean_us']:.0f} | "
               f"{r['pin_latency']['mean_us']:.0f} ({r['pin_latency']['p50_us']:.0f}) | "
               f"{r['drain']['local_drains']} ({r['drain']['total_ns'] / 1e6:.0f}) | "
               f"{vm.get('pgmigrate_success', 0)}/{vm.get('pgmigrate_fail', 0)} | {sched}")
    else:
        res = "- | - | - | - | - | - | - | " + \
            f"{vm.get('pgmigrate_success', 0)}/{vm.get('pgmigrate_fail', 0)} | -"
    print(f"| {p} | {rnd} | {s:.1f} | {ratio} | {rep['exit_code']} | "
          f"{lx.get('checksum_verified')} | {rep['model']} | {res} | {commit} |"
          if s else f"| {p} | {rnd} | - | - | {rep['exit_code']} | {lx.get('checksum_verified')} | "
          f"{rep['model']} | {res} | {commit} |")
