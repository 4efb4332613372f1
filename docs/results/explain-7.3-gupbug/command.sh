#!/bin/sh
date -u +%Y-%m-%dT%H:%M > date.txt
pinvmm gup-check --pages 1024 --rounds 1 --states --json gup.json > gup.ktap 2>&1; echo "gup $?" >> codes.txt
pinvmm campaign --vm-type protected --policies none,mlock-drain,lru-add-drain,retry --runs 20 --guest memtouch --mem 2M --prefill 50 --trace --out pkvm-trace -q > pkvm-trace.txt 2>&1; echo "pkvm-trace $?" >> codes.txt
pinvmm campaign --vm-type protected --policies none,retry --runs 20 --guest memtouch --mem 2M --prefill 50 --out pkvm-notrace -q > pkvm-notrace.txt 2>&1; echo "pkvm-notrace $?" >> codes.txt
pinvmm campaign --vm-type protected --policies none --runs 10 --guest memtouch --mem 2M --prefill 1 --trace --out pkvm-prefill1 -q > pkvm-prefill1.txt 2>&1; echo "pkvm-prefill1 $?" >> codes.txt
pinvmm run --vm-type protected --guest memtouch --mem 2M --prefill 50 --policy none --trace --json one-trace.json > one-trace.txt 2>&1
pinvmm run --vm-type protected --guest memtouch --mem 2M --prefill 50 --policy none --json one.json > one.txt 2>&1
date -u +%Y-%m-%dT%H:%M >> date.txt
