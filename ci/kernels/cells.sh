#!/bin/sh
# ci/kernels/cells.sh — runs INSIDE the board (busybox sh): protected-VM cells, round-robin.
# usage: cells.sh RUNS MEM POLICIES PLACES PREFILLS   (lists comma-separated)
#   PLACES: other (loader thread CPU0, vCPU CPU1) | same (both CPU0)
# Writes runs.txt ("policy place prefill run rc") and one JSON report per VM under json/.
runs=$1 mem=$2 policies=$3 places=$4 prefills=$5
mkdir -p json
i=1
while [ "$i" -le "$runs" ]; do
  for pf in $(echo "$prefills" | tr , ' '); do
    for place in $(echo "$places" | tr , ' '); do
      for p in $(echo "$policies" | tr , ' '); do
        if [ "$place" = same ]; then pin=same; else pin=1; fi
        j=json/$p-$place-$pf-$i.json
        pinvmm run --vm-type protected --guest memtouch --mem "$mem" --policy "$p" \
          --fault-cpu 0 --pin-cpu "$pin" --prefill "$pf" --timeout 120 --quiet --json "$j"
        echo "$p $place $pf $i $?" >> runs.txt
      done
    done
  done
  i=$((i + 1))
done
