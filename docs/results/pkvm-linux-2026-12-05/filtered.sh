#!/bin/sh
# INSIDE the gupbug board: a protected VM's failed pin handled by a filtered vCPU thread
R="pinvmm run --vm-type protected --kernel /data/Image --initrd /data/initrd.gz --cmdline pinvmm.fill=4M --mem 128M --fault-cpu 0 --pin-cpu 1 --timeout 400"
$R --policy none --json none.json > none.txt 2>&1; echo "linux none exit $?" >> codes.txt
$R --policy retry --json retry.json > retry.txt 2>&1; echo "linux retry exit $?" >> codes.txt
pinvmm run --vm-type protected --guest memtouch --mem 2M --prefill 50 --policy none --fault-cpu 0 --pin-cpu 1 --json mt.json > mt.txt 2>&1; echo "memtouch none exit $?" >> codes.txt
exit 0
