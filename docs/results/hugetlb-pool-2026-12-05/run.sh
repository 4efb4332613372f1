#!/bin/bash
# Host side: flock /work/scratch/board.lock /work/scratch/huge/run.sh OUT CASES...
set -u
out=$1; shift
cd /work/main
img=$(ci/board/kernels 6.12.118 | tail -1)
initrd=/work/scratch/huge/initrd-arm64.cpio.gz
{ echo "start $(date -u +%FT%TZ) host $(uname -r) cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) load $(cat /proc/loadavg)"
  echo "bin sha256 $(sha256sum /work/scratch/huge/bin/pinvmm | cut -c1-16) (release static aarch64 of main 7dfafa5, clean tree)"
  echo "board 6.12.118 protected movable; guest kernel $img; cases $*"; } > /work/scratch/huge/host-$(basename $out).txt
ci/board/run --kernel 6.12.118 --mode protected --memory movable --bin /work/scratch/huge/bin/pinvmm \
  --file "$img:/data/Image" --file "$initrd:/data/initrd.gz" --file /work/scratch/huge/huge-pool.sh:/data/huge-pool.sh \
  --results "$out" --timeout 1500 -- sh /data/huge-pool.sh "$@"
rc=$?
echo "end $(date -u +%FT%TZ) rc $rc load $(cat /proc/loadavg)" >> /work/scratch/huge/host-$(basename $out).txt
exit $rc
