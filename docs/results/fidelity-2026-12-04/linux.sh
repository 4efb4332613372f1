#!/bin/sh
# Runs INSIDE the board: protected Linux guests loaded crosvm's way (pKVM-exact).
# usage: linux.sh RUNS POLICIES RATE OUT [MEM]
runs=$1 pol=$2 rate=$3 out=$4 mem=${5:-128M}
tp=""
if [ "$rate" -gt 0 ]; then
  pinvmm lru-traffic --kind anon --rate "$rate" --cpu 0 > "traffic-$out.txt" 2>&1 &
  tp=$!
  sleep 2
fi
pinvmm campaign --vm-type protected --kernel /data/Image --initrd /data/initrd.gz \
  --cmdline "pinvmm.fill=4M pinvmm.forks=0 pinvmm.tmpfs=1M" --mem "$mem" \
  --policies "$pol" --runs "$runs" --fault-cpu 0 --pin-cpu 1 --timeout 600 --ktap \
  --out "$out" -q > "$out.txt" 2>&1
echo "$out campaign $?" >> codes.txt
if [ -n "$tp" ]; then kill "$tp"; wait "$tp"; fi
cat /proc/loadavg >> codes.txt
