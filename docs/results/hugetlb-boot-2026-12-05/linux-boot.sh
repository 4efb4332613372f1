#!/bin/sh
# Runs INSIDE the arm64 board (ci/board/run ... -- sh /data/linux-boot.sh ROUNDS): a Linux guest
# (normal VM) from launch to its verified result line, per stage-2 path, rounds interleaved:
#   kernel  KVM's own stage-2 faults (no userfaultfd, no pin)
#   uffd    the userfaultfd round trip, no pin
#   exact   pin + mlock-drain, pKVM-exact (the default: the pin faults the page in on the vCPU's CPU)
#   touch   pin + mlock-drain, stress model --fault-in touch (fault-in thread on CPU 0 first)
#   huge    pin + mlock-drain, pKVM-exact, --backing hugetlb (2 MiB granules: one fault, pin and
#           map per 2 MiB; the script reserves the hugetlb pages)
#   ahead   exact plus --fault-ahead ${AHEAD:-15}: each fault also pins and maps up to AHEAD pages
#           after it that no fault has reached, in chunks of 16: per chunk one mlock-drain on
#           the fault CPU (the fault-in thread), one io_uring update (one pin per page) and one
#           UFFDIO_CONTINUE on the pin CPU; the pins fault the pages in on the vCPU's CPU, as in
#           exact. NOT pKVM-exact: pKVM pins only the faulting page (the report's model is
#           pkvm-placement+fault-aheadK)
#   ahead63 the same with --fault-ahead 63 (aheadN: --fault-ahead N, e.g. ahead255)
#   uffdahead  the userfaultfd round trip, no pin, --fault-ahead ${AHEAD:-15} (a baseline)
#   protected       a real pKVM protected VM (--vm-type protected; arm64 board in kvm-arm.mode=protected,
#                   Linux 7.x), --policy mlock-drain: KVM takes each long-term pin itself on the
#                   vCPU thread (pkvm_mem_abort()), no userfaultfd, no pinvmm resolver; the loader
#                   thread on CPU 0 writes Image, initrd and device tree through the mlocked mapping
#                   and drains CPU 0 before the vCPU runs on CPU 1 (pKVM-exact)
#   protected-none  the same with --policy none (no drain)
# usage: [AHEAD=K] [KIMAGE=PATH] [TIMEOUT=S] linux-boot.sh ROUNDS [MEM] [FILL] [PATHS]
#   KIMAGE: the guest kernel (default /data/Image; the x86_64 board's bzImage, e.g. /data/bzImage)
#   TIMEOUT: pinvmm run --timeout per boot (default 900)
# Each boot leaves boot-PATH-ROUND.json (pinvmm's report) and .txt; codes.txt gets one line per
# boot: time, path, round, pinvmm's exit code (0 = result line verified), load average.
rounds=$1 mem=${2:-256M} fill=${3:-64M} paths=${4:-kernel,uffd,exact,touch}
case ",$paths," in *huge,*)
  # a long-term pin migrates each huge page out of ZONE_MOVABLE into another free huge page: the
  # pool needs room for both, OUTSIDE ZONE_MOVABLE: the pool fills ZONE_MOVABLE first (HUGEPAGES
  # overrides; with movablecore=512M on the arm64 board 400 leaves ~186 outside it)
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
      kernelhuge) set -- --stage2 kernel --backing hugetlb ;;
      uffdhuge) set -- --stage2 uffd --backing hugetlb ;;
      ahead) set -- --stage2 pin --policy mlock-drain --fault-in pin --fault-ahead "${AHEAD:-15}" ;;
      ahead[0-9]*) set -- --stage2 pin --policy mlock-drain --fault-in pin --fault-ahead "${p#ahead}" ;;
      uffdahead) set -- --stage2 uffd --fault-ahead "${AHEAD:-15}" ;;
      protected) set -- --vm-type protected --policy mlock-drain ;;
      protected-none) set -- --vm-type protected --policy none ;;
      *) echo "linux-boot.sh: unknown path $p" >&2; exit 2 ;;
    esac
    pinvmm run --kernel "${KIMAGE:-/data/Image}" --initrd /data/initrd.gz --mem "$mem" \
      --cmdline "pinvmm.fill=$fill" "$@" --timeout "${TIMEOUT:-900}" --json "boot-$p-$r.json" \
      > "boot-$p-$r.txt" 2>&1
    rc=$?
    echo "$(date -u +%T) $p round $r exit $rc load $(cut -d' ' -f1-3 /proc/loadavg)" >> codes.txt
  done
  r=$((r + 1))
done
exit 0
