#!/bin/bash
# Host side: queue the board runs, each under the machine-wide board lock.
cd /work/wt/fidelity
BIN=/work/scratch/fid/bin-clean/pinvmm
GUPBUG=/root/.cache/pinvmm/kernels/7.3-gupbug-795db1373a92/Image
IMG=$(ci/board/kernels 6.12.118 | tail -1)
INITRD=target/fid/initrd-arm64.cpio.gz
R=/work/scratch/fid/res
mkdir -p $R
log() { echo "$(date -u +%FT%TZ) $* | $(uptime)" >> $R/jobs.log; }
board() { # name kernel -- cmd...
  local name=$1 k=$2; shift 2
  log "start $name"
  flock /work/scratch/board.lock ci/board/run --kernel "$k" --mode protected --memory movable --bin $BIN \
    --file $IMG:/data/Image --file $INITRD:/data/initrd.gz \
    --file /work/scratch/fid/board/sweep.sh:/data/sweep.sh --file /work/scratch/fid/board/linux.sh:/data/linux.sh \
    --results $R/$name --timeout ${TO:-1500} -- "$@" > $R/$name.log 2>&1
  log "end $name rc=$?"
}
case "$1" in
  A) board gupbug-A $GUPBUG sh -c "sh /data/linux.sh 8 none 0 lin-none; sh /data/sweep.sh 15 2M 50 none,mlock-drain,lru-add-drain,retry 0,500,5000,50000 anon" ;;
  C) board fixed-C 7.3 sh -c "sh /data/linux.sh 3 none 0 lin-none; sh /data/sweep.sh 15 2M 50 none 0,50000 anon" ;;
  B) TO=2400 board gupbug-B $GUPBUG sh -c "sh /data/linux.sh 2 mlock-drain,lru-add-drain,retry 0 lin-drains" ;;
  T) board gupbug-T $GUPBUG sh -c "sh /data/linux.sh 6 none 50000 lin-none-traffic50k" ;;
esac
