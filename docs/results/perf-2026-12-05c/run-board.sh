#!/bin/bash
# Host side, under the board lock: flock /work/scratch/board.lock run-board.sh ARCH OUTDIR ROUNDS PATHS [BOARD-TIMEOUT] [RUN-TIMEOUT]
#   arm64: board Debian 7.3.4 in kvm-arm.mode=protected, guest Debian 6.12.118 arm64 Image
#   amd64: board Debian 6.12.118 amd64 (nested SVM), guest the same kernel's bzImage
# Binaries and initramfs were built beforehand from the clean worktree (see the section in
# docs/PERFORMANCE.md); this script only boots the board and records host facts and load.
set -u
arch=$1 out=$2 rounds=$3 paths=$4 btimeout=${5:-3000} rtimeout=${6:-900}
cd "$(git rev-parse --show-toplevel)"
lb=target/linux-boot
cp docs/results/perf-2026-12-05c/linux-boot.sh $lb/linux-boot.sh
if [ "$arch" = arm64 ]; then
  bin=target/aarch64/aarch64-unknown-linux-gnu/release/pinvmm
  img=$(ci/board/kernels 6.12.118 | tail -1) initrd=$lb/initrd-arm64.cpio.gz
  board=(--kernel 7.3 --mode protected --memory movable) kimage=/data/Image
else
  bin=target/amd64-static/x86_64-unknown-linux-gnu/release/pinvmm
  img=$(ci/board/kernels --arch amd64 6.12.118 | tail -1) initrd=$lb/initrd-amd64.cpio.gz
  board=(--arch amd64 --kernel 6.12.118 --memory movable) kimage=/data/bzImage
fi
mkdir -p "$out.host"
{
  echo "start $(date -u +%FT%TZ)"
  echo "worktree HEAD $(git rev-parse --short=12 HEAD), tracked changes: $(git status --porcelain --untracked-files=no | wc -l)"
  echo "host kernel $(uname -r) $(uname -m), nproc $(nproc), cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "bin $bin sha256 $(sha256sum "$bin" | cut -c1-16) (built $(date -u -r "$bin" +%FT%TZ))"
  echo "guest kernel $img sha256 $(sha256sum "$img" | cut -c1-16)"
  echo "initrd $initrd sha256 $(sha256sum "$initrd" | cut -c1-16)"
  echo "board ${board[*]} --timeout $btimeout; linux-boot.sh $rounds 256M 64M $paths, TIMEOUT=$rtimeout KIMAGE=$kimage"
  echo "load $(cat /proc/loadavg)"
} | tee "$out.host/host.txt"
( while :; do echo "$(date -u +%T) $(cat /proc/loadavg)"; sleep 30; done ) > "$out.host/hostload.txt" &
sampler=$!
ci/board/run "${board[@]}" --bin "$bin" --file "$img:$kimage" --file "$initrd:/data/initrd.gz" \
  --file $lb/linux-boot.sh:/data/linux-boot.sh --results "$out" --timeout "$btimeout" -- \
  sh -c "TIMEOUT=$rtimeout KIMAGE=$kimage sh /data/linux-boot.sh $rounds 256M 64M $paths"
rc=$?
kill "$sampler"
echo "end $(date -u +%FT%TZ) rc $rc load $(cat /proc/loadavg)" | tee -a "$out.host/host.txt"
exit $rc
