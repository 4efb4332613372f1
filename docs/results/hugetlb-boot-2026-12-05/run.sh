#!/bin/bash
set -u
out=/work/scratch/huge2/out
cd /work/main
img=$(ci/board/kernels 6.12.118 | tail -1)
{ echo "start $(date -u +%FT%TZ) host $(uname -r) cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) nproc $(nproc) load $(cat /proc/loadavg)"
  echo "bin sha256 $(sha256sum /work/scratch/huge/bin/pinvmm | cut -c1-16) (release static aarch64 of main 7dfafa5, clean tree)"
  echo "board 6.12.118 protected movable; guest kernel $img; HUGEPAGES=400 linux-boot.sh 2 256M 64M kernel,kernelhuge,huge,uffdhuge,exact"; } > /work/scratch/huge2/host.txt
ci/board/run --kernel 6.12.118 --mode protected --memory movable --bin /work/scratch/huge/bin/pinvmm \
  --file "$img:/data/Image" --file /work/scratch/huge/initrd-arm64.cpio.gz:/data/initrd.gz --file /work/scratch/huge2/linux-boot.sh:/data/linux-boot.sh \
  --results "$out" --timeout 1500 -- sh -c "HUGEPAGES=400 sh /data/linux-boot.sh 2 256M 64M kernel,kernelhuge,huge,uffdhuge,exact"
rc=$?
echo "end $(date -u +%FT%TZ) rc $rc load $(cat /proc/loadavg)" >> /work/scratch/huge2/host.txt
