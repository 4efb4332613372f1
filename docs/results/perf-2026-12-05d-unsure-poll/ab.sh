#!/bin/sh
# usage: ab.sh ROUNDS BIN... : per round, per binary: uffd then stress pin none (memtouch 16M)
rounds=$1; shift
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    for p in uffd pin; do
      if [ $p = uffd ]; then set -- "$@"; a="--stage2 uffd"; else a="--stage2 pin --policy none --fault-in touch"; fi
      /work/scratch/ab/$b run --guest memtouch --mem 16M --backing shmem $a --json /tmp/ab-$b-$p.json >/dev/null 2>&1 || echo "FAIL $b $p"
      python3 - "$b" "$p" "$r" <<'PY'
import json,sys
b,p,r=sys.argv[1:]
d=json.load(open(f'/tmp/ab-{b}-{p}.json'))
def f(x,k):
  if isinstance(x,dict):
    for kk,v in x.items():
      if kk==k: return v
      y=f(v,k)
      if y is not None: return y
print(r,b,p,round(f(d,'first_touch_us_per_page'),1),f(d,'crowded_waits'),f(d,'unsure_polls'),f(d,'fault_thread_sleeps'),open('/proc/loadavg').read().split()[0],flush=True)
PY
    done
  done
done
