#!/usr/bin/env python3
"""Tables of linux-boot.sh's reports: python3 summary.py DIR (DIR holds boot-PATH-ROUND.json).

Extends docs/results/perf-2026-12-05/linux-boot/ahead/summary.py with the protected paths
(real pKVM: no resolver; KVM's pins are not counted by pinvmm, only the board's pgmigrate delta)
and the vCPU thread's run / run-queue wait. Prints two tables:
 1. per boot: seconds from launch to the verified result line, ratio to the same round's `kernel`
    boot, exit code, checksum verified, model, first console output, the guest workload's own
    elapsed time, vCPU run / run-queue wait, MMIO exits;
 2. per boot: resolver counters (faults minor/missing, pins, pages ahead, hand-offs, resolve and
    pin latency, drains, pgmigrate, each resolver thread's run / run-queue wait) or, for
    protected VMs, the loader's pages and drains, EFAULTs and retries."""
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
order = ["kernel", "uffd", "exact", "touch", "huge", "protected", "protected-none", "ahead",
         "ahead63", "uffdahead"]


def rank(p):
    if p in order:
        return (order.index(p), 0)
    if re.fullmatch(r"ahead\d+", p):
        return (order.index("ahead63"), int(p[5:]))
    return (99, 0)


def s_(ns):
    return f"{ns / 1e9:.1f}"


rows.sort(key=lambda r: (rank(r[0]), r[1]))
kernel_s = {
    rnd: rep["linux"]["result_line_ms"] / 1e3
    for p, rnd, rep in rows
    if p == "kernel" and rep["exit_code"] == 0 and (rep.get("linux") or {}).get("result_line_ms")
}
print("| path | round | s to result | / kernel | exit | verified | model | first console s "
      "| guest workload s | vCPU run / runq wait s | vCPU CPU | MMIO exits | commit |")
print("|" + "---|" * 13)
for p, rnd, rep in rows:
    lx = rep.get("linux") or {}
    ms = lx.get("result_line_ms")
    ok = rep["exit_code"] == 0 and lx.get("checksum_verified")
    s = f"{ms / 1e3:.1f}" if ms else "-"
    ratio = f"{ms / 1e3 / kernel_s[rnd]:.2f}x" if ms and ok and rnd in kernel_s else "-"
    fc = f"{lx['first_console_ms'] / 1e3:.1f}" if lx.get("first_console_ms") else "-"
    wl = f"{lx['result']['elapsed_ms'] / 1e3:.1f}" if lx.get("result") else "-"
    v = rep["vcpus"][0] if rep.get("vcpus") else {}
    sch = v.get("sched") or {}
    vs = f"{s_(sch['run_ns'])} / {s_(sch['runq_wait_ns'])}" if sch else "-"
    r = rep.get("resolver")
    vcpu_cpu = r["vcpu_cpu"] if r else (rep.get("protected") or {}).get("vcpu_cpu", "-")
    mmio = (v.get("exits") or {}).get("mmio", "-")
    b = rep.get("build", {})
    commit = f"{b.get('git_commit', '?')}{' dirty' if b.get('git_dirty') else ''}"
    print(f"| {p} | {rnd} | {s} | {ratio} | {rep['exit_code']} | {lx.get('checksum_verified')} | "
          f"{rep['model']} | {fc} | {wl} | {vs} | {vcpu_cpu} | {mmio} | {commit} |")

print()
print("| path | round | faults (minor/missing) | pins ok / failed | pages ahead | hand-offs "
      "| resolve mean us (p50) | resolve total s | pin mean us (p50) | pin calls total s "
      "| drains (ms) | pgmigrate ok/fail | resolver threads run / runq wait s "
      "| protected: loader pages (ms), drains, EFAULTs, retries |")
print("|" + "---|" * 14)
for p, rnd, rep in rows:
    r = rep.get("resolver")
    vm = rep.get("vmstat_delta", {})
    mig = f"{vm.get('pgmigrate_success', 0)}/{vm.get('pgmigrate_fail', 0)}"
    if r:
        rl, pl = r["resolve_latency"], r["pin_latency"]
        th = ", ".join(f"{t['thread']} {s_(t['run_ns'])} / {s_(t['runq_wait_ns'])}"
                       for t in r["threads"])
        pins = f"{r['pins']['ok']} / {r['pins']['failed']}" if r["pins"]["attempted"] else "-"
        pin = (f"{pl['mean_us']:.0f} ({pl['p50_us']:.0f}) | {pl['count'] * pl['mean_us'] / 1e6:.1f}"
               if pl["count"] else "- | -")
        print(f"| {p} | {rnd} | {r['faults']} ({r['minor_faults']}/{r['missing_faults']}) | {pins} | "
              f"{r['pages_ahead']} | {r['fault_cpu_handoffs']} | "
              f"{rl['mean_us']:.0f} ({rl['p50_us']:.0f}) | {rl['count'] * rl['mean_us'] / 1e6:.1f} | "
              f"{pin} | {r['drain']['local_drains']} ({r['drain']['total_ns'] / 1e6:.0f}) | "
              f"{mig} | {th} | - |")
    elif rep.get("protected"):
        pr = rep["protected"]
        print(f"| {p} | {rnd} | - | - | - | - | - | - | - | - | - | {mig} | - | "
              f"{pr['loader_pages']} ({pr['loader_ms']:.0f}), {pr['drain']['local_drains']} local "
              f"+ {pr['drain']['all_drains']} all, {pr['efaults']}, {pr['retries']} |")
    else:
        print(f"| {p} | {rnd} | - | - | - | - | - | - | - | - | - | {mig} | - | - |")
