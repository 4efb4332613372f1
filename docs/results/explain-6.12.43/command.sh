#!/bin/sh
date -u +%Y-%m-%dT%H:%M > date.txt
pinvmm gup-check --pages 1024 --rounds 1 --states --json gup.json > gup.ktap 2>&1; echo "gup $?" >> codes.txt
pinvmm campaign --policies none,lru-add-drain,mlock-drain,retry --runs 40 --guest hello --mem 16M --trace --out camp-hello -q > camp-hello.txt 2>&1; echo "hello $?" >> codes.txt
pinvmm campaign --policies none,retry --runs 5 --guest memtouch --mem 4M --noise 31 --trace --out camp-noise31 -q > camp-noise31.txt 2>&1; echo "noise31 $?" >> codes.txt
mkdir -p cost
for i in 1 2 3 4 5 6 7 8; do
  pinvmm run --guest memtouch --mem 4M --policy mlock-drain --json cost/off-$i.json -q
  pinvmm run --guest memtouch --mem 4M --policy mlock-drain --trace --json cost/on-$i.json -q
done
echo "cost done" >> codes.txt
date -u +%Y-%m-%dT%H:%M >> date.txt
