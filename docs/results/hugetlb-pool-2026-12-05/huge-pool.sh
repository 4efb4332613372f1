#!/bin/sh
# Runs INSIDE the arm64 board: why a pKVM-exact hugetlb Linux boot ends at its ~72nd pin.
# Per case: size the hugetlb pool (and overcommit), record where the pool's pages went (free
# pages per zone before and after), boot the Linux guest with --backing hugetlb, pKVM-exact
# (--fault-in pin) + mlock-drain, and record the hugetlb counters after.
# usage: huge-pool.sh CASE... where CASE = POOL:OVERCOMMIT (e.g. 272:0 272:256 400:0)
hp=/sys/kernel/mm/hugepages/hugepages-2048kB
zones() { awk '/^Node/ {z=$4} /nr_free_pages/ {printf "%s=%s ", z, $2}' /proc/zoneinfo; }
counters() { for f in nr_hugepages free_hugepages resv_hugepages surplus_hugepages nr_overcommit_hugepages; do printf "%s=%s " $f "$(cat $hp/$f)"; done; }
n=0
for c in "$@"; do
  n=$((n + 1))
  pool=${c%%:*} over=${c#*:}
  echo 0 > /proc/sys/vm/nr_hugepages; echo 0 > /proc/sys/vm/nr_overcommit_hugepages
  echo 3 > /proc/sys/vm/drop_caches
  before=$(zones)
  echo "$pool" > /proc/sys/vm/nr_hugepages; echo "$over" > /proc/sys/vm/nr_overcommit_hugepages
  after=$(zones)
  {
    echo "case $n pool=$pool overcommit=$over"
    echo "  free 4K pages per zone before the pool: $before"
    echo "  free 4K pages per zone after the pool:  $after"
    echo "  counters before the boot: $(counters)"
  } >> huge-pool.txt
  pinvmm run --kernel /data/Image --initrd /data/initrd.gz --mem 256M --cmdline "pinvmm.fill=64M" \
    --stage2 pin --policy mlock-drain --fault-in pin --backing hugetlb --timeout 900 \
    --json "huge-$n.json" > "huge-$n.txt" 2>&1
  rc=$?
  {
    echo "  pinvmm exit $rc: $(head -1 huge-$n.txt)"
    echo "  counters after the boot: $(counters)"
    grep -E 'faults|TERMINATED|vmstat' "huge-$n.txt" | sed 's/^/  /'
  } >> huge-pool.txt
done
echo 0 > /proc/sys/vm/nr_hugepages
exit 0
