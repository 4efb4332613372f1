#!/usr/bin/env python3
"""ci/kernels/summary.py [--export] DIR... — one Markdown table per results dir of cells.sh: per
cell the VM-termination rate with a Wilson 95% interval, KVM_RUN EFAULTs/retries,
pgmigrate_fail, drain cost and guest time (medians). Reads DIR/json/*.json (pinvmm reports) or,
without them, DIR/vms.jsonl; --export writes DIR/vms.jsonl (the fields used here, one VM a line)
so a results dir can be kept small (docs/results/pkvm-*)."""
import glob, json, math, os, statistics, sys
from collections import defaultdict

def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))

def med(xs):
    return statistics.median(xs) if xs else float("nan")

CONFIG = ("vm_type", "policy", "cpus", "prefill_pct", "mem_size", "payload")
KEEP = ("outcome", "exit_code", "config", "protected", "vmstat_delta", "timing", "summary")
export = "--export" in sys.argv
for d in [a for a in sys.argv[1:] if a != "--export"]:
    env = {}
    if os.path.exists(os.path.join(d, "board.env")):
        for line in open(os.path.join(d, "board.env")):
            k, _, v = line.strip().partition("=")
            env[k] = v.strip("'\"").replace("\\ ", " ")
    cells = defaultdict(list)
    rcs = defaultdict(list)
    for line in open(os.path.join(d, "runs.txt")):
        p, place, pf, i, rc = line.split()
        rcs[(p, place, int(pf))].append(int(rc))
    files = sorted(glob.glob(os.path.join(d, "json", "*.json")))
    if files:
        reports = [json.load(open(f)) for f in files]
    else:
        reports = [json.loads(l) for l in open(os.path.join(d, "vms.jsonl"))]
    if export:
        with open(os.path.join(d, "vms.jsonl"), "w") as out:
            for r in reports:
                v = {k: r.get(k) for k in KEEP}
                v["config"] = {k: r["config"][k] for k in CONFIG}
                v["timing"] = {k: r["timing"][k] for k in ("setup_ms", "guest_ms", "wall_ms")}
                v["vmstat_delta"] = {k: x for k, x in r["vmstat_delta"].items() if x}
                out.write(json.dumps(v, sort_keys=True) + "\n")
    for r in reports:
        c = r["config"]
        place = "same" if c["cpus"]["fault_cpu"] == c["cpus"]["pin_cpu"] else "other"
        cells[(c["policy"], place, c["prefill_pct"])].append(r)
    print(f"\n### {os.path.basename(os.path.normpath(d))}: kernel {env.get('kernel', '?')}, "
          f"{env.get('kvm_mode', '?')}, Movable {env.get('movable_mib', '?')} MiB\n")
    print("| policy | loader CPU vs vCPU | prefill | VMs | terminated | rate | Wilson 95% | "
          "other outcomes | EFAULTs | retries | pgmigrate_fail | drain µs (median) | guest ms (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = {"none": 0, "mlock-drain": 1, "lru-add-drain": 2, "retry": 3}
    for key in sorted(rcs, key=lambda k: (k[2], k[1], order.get(k[0], 9))):
        p, place, pf = key
        codes, rs = rcs[key], cells.get(key, [])
        n, k = len(codes), sum(1 for x in codes if x == 5)
        other = defaultdict(int)
        for x in codes:
            if x not in (0, 5):
                other[x] += 1
        lo, hi = wilson(k, n)
        ef = sum(r.get("protected", {}).get("efaults", 0) for r in rs)
        rt = sum(r.get("protected", {}).get("retries", 0) for r in rs)
        mf = sum(r["vmstat_delta"].get("pgmigrate_fail", 0) for r in rs)
        dr = med([r.get("protected", {}).get("drain", {}).get("total_ns", 0) / 1e3 for r in rs])
        gm = med([r["timing"]["guest_ms"] for r in rs])
        oth = ", ".join(f"exit {c}: {m}" for c, m in sorted(other.items())) or "-"
        print(f"| {p} | {place} | {pf}% | {n} | {k} | {k / n:.2f} | [{lo:.2f}, {hi:.2f}] | {oth} | "
              f"{ef} | {rt} | {mf} | {dr:.1f} | {gm:.0f} |")
