#!/bin/sh
# Runs INSIDE the arm64 board (ci/board/run ... -- sh /data/linux-boot.sh ROUNDS): a Linux guest
# (normal VM) from launch to its verified result line, per stage-2 path, rounds interleaved:
#   kernel  KVM's own stage-2 faults (no userfaultfd, no pin)
#   uffd    the userfaultfd round trip, no pin
#   exact   pin + mlock-drain, pKVM-exact (the default: the pin faults the page in on the vCPU's CPU)
#   touch   pin + mlock-drain, stress model --fault-in touch (fault-in thread on CPU 0 first)
#   huge    pin + mlock-drain, pKVM-exact, --backing hugetlb (2 MiB granules: one fault, pin and
#           map per 2 MiB; the script reserves the hugetlb pages)
# usage: linux-boot.sh ROUNDS [MEM] [FILL] [PATHS]
rounds=$1 mem=${2:-256M} fill=${3:-64M} paths=${4:-kernel,uffd,exact,touch}
case ",$paths," in *,huge,*)
  # a long-term pin migrates each huge page out of ZONE_MOVABLE into another free huge page: the
  # pool needs room for both (HUGEPAGES overrides)
  echo "${HUGEPAGES:-$(( ${mem%M} + 16 ))}" > /proc/sys/vm/nr_hugepages
  echo "hugetlb pool: $(cat /proc/sys/vm/nr_hugepages) pages" >> codes.txt ;;
esac
r=1
while [ "$r" -le "$rounds" ]; do
  for p in $(echo "$paths" | tr , ' '); do
    case $p in
      kernel) set -- --stage2 kernel ;;
      uffd) set -- --stage2 uffd ;;
      exact) set -- --stage2 pin --policy mlock-drain --fault-in pin ;;
      touch) set -- --stage2 pin --policy mlock-drain --fault-in touch ;;
      huge) set -- --stage2 pin --policy mlock-drain --fault-in pin --backing hugetlb ;;
      *) echo "linux-boot.sh: unknown path $p" >&2; exit 2 ;;
    esac
    pinvmm run --kernel /data/Image --initrd /data/initrd.gz --mem "$mem" \
      --cmdline "pinvmm.fill=$fill" "$@" --timeout 900 --json "boot-$p-$r.json" \
      > "boot-$p-$r.txt" 2>&1
    echo "$(date -u +%T) $p round $r exit $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> codes.txt
  done
  r=$((r + 1))
done
exit 0
