#!/bin/sh
# Runs INSIDE the board: protected memtouch VMs (pKVM-exact, loader on CPU 0 writes the payload and
# --prefill through the mlocked view, vCPU on CPU 1), with background LRU traffic from another
# process on the loader's CPU at each rate. usage: sweep.sh RUNS MEM PREFILL POLICIES RATES KIND
runs=$1 mem=$2 pf=$3 pol=$4 rates=$5 kind=${6:-anon}
for rate in $(echo "$rates" | tr , ' '); do
  tp=""
  if [ "$rate" -gt 0 ]; then
    pinvmm lru-traffic --kind "$kind" --rate "$rate" --cpu 0 > "traffic-$rate.txt" 2>&1 &
    tp=$!
    sleep 2
  fi
  pinvmm campaign --vm-type protected --guest memtouch --mem "$mem" --prefill "$pf" \
    --policies "$pol" --runs "$runs" --fault-cpu 0 --pin-cpu 1 --timeout 120 --ktap \
    --out "camp-$rate" -q > "camp-$rate.txt" 2>&1
  echo "rate $rate campaign $?" >> codes.txt
  if [ -n "$tp" ]; then kill "$tp"; wait "$tp"; fi
  cat /proc/loadavg >> codes.txt
done
