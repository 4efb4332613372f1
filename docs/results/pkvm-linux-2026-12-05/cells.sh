#!/bin/sh
# Runs INSIDE the board (ci/board/run ... -- sh /data/cells.sh ...): protected Linux guests loaded
# crosvm's way (pKVM-exact: the loader thread on CPU 0 preads the Image and initrd straight into
# the mlocked guest mapping, the vCPU and so KVM's pins on CPU 1), one campaign per condition over
# every policy given.
# usage: cells.sh RUNS POLICIES CONDITIONS [CMDLINE-EXTRA]
#   CONDITIONS, comma-separated:
#     warm        the files on the board's initramfs (always in memory: no page-cache allocation)
#     cold        the files on an ext2 image (/data/img.ext2) on a loop device, unmounted and
#                 mounted again before every VM (--before-run), so each VM's loader reads them
#                 through readahead into fresh page-cache folios on its CPU, as from a disk
#     anon:RATE   warm, with `pinvmm lru-traffic --kind anon --rate RATE --cpu 0` running in
#                 another process on the loader's CPU (anonymous faults: LRU-add traffic)
#     file:RATE   the same with page-cache reads
runs=$1 pol=$2 conds=$3 extra=${4:-}
cmdline="pinvmm.fill=4M pinvmm.forks=0 pinvmm.tmpfs=1M${extra:+ $extra}"
mkdir -p /mnt/img
for c in $(echo "$conds" | tr , ' '); do
  tp="" k=/data/Image i=/data/initrd.gz
  out=lin-$(echo "$c" | tr : -)
  case $c in
    warm) ;;
    cold) k=/mnt/img/Image i=/mnt/img/initrd.gz
      # mounted once so the campaign's input checks find the files; --before-run remounts
      mount -o loop,ro /data/img.ext2 /mnt/img || { echo "cells.sh: cannot loop-mount" >&2; exit 1; } ;;
    anon:*|file:*)
      pinvmm lru-traffic --kind "${c%%:*}" --rate "${c#*:}" --cpu 0 > "traffic-$out.txt" 2>&1 &
      tp=$!
      sleep 2 ;;
    *) echo "cells.sh: unknown condition $c" >&2; exit 2 ;;
  esac
  set -- pinvmm campaign --vm-type protected --kernel "$k" --initrd "$i" --cmdline "$cmdline" \
    --mem 128M --policies "$pol" --runs "$runs" --fault-cpu 0 --pin-cpu 1 --timeout 600 --ktap \
    --out "$out" -q
  if [ "$c" = cold ]; then
    set -- "$@" --before-run "umount /mnt/img 2>/dev/null; mount -o loop,ro /data/img.ext2 /mnt/img"
  fi
  echo "$(date -u +%T) $out: $*" >> codes.txt
  "$@" > "$out.txt" 2>&1
  echo "$(date -u +%T) $out campaign exit $?" >> codes.txt
  if [ -n "$tp" ]; then kill "$tp"; wait "$tp"; fi
  cat /proc/loadavg >> codes.txt
done
umount /mnt/img 2>/dev/null
exit 0
