#!/bin/bash
D=docs/results/perf-2026-12-05b/recheck
for r in 1 2 3; do
  echo "== $(date -u '+%F %T') round $r start load $(cat /proc/loadavg)" >> $D/log
  (cd /work/main && $D/pinvmm-1048524 bench --only touch,jobs --load 2 --mem 16M --reps 5 --fault-ahead 0 --backings shmem --jobs 2 --jobs-runs 10 --json $D/r$r.json > $D/r$r.md 2> $D/r$r.err); echo "== $(date -u '+%F %T') round $r rc=$? load $(cat /proc/loadavg)" >> $D/log
done
