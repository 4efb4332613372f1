#!/bin/busybox sh
# /init of the emulated arm64 and x86_64 boards (ci/board/run copies this into the initramfs).
# Prints board facts, runs /pinvmm/cmd.sh in /results, then sends the exit code and a
# base64 tar.gz of /results to the host between @@PINVMM markers, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/results
mkdir -p /proc /sys /dev /tmp /results
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# rootfs was sized at 50% of the RAM present early in boot, before a CMA area is released
# to the buddy allocator (with cma=1536M only ~200 MB): give /tmp and /results their own tmpfs.
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /results

up() { cut -d' ' -f1 /proc/uptime; }
fact() { echo "@@PINVMM fact $1=$2"; }
fact init_uptime "$(up)"
# Kernel modules the host put in /lib/modules/pinvmm (x86: kvm_amd and its dependencies), in
# the order of /lib/modules/pinvmm/order (dependencies first).
if [ -f /lib/modules/pinvmm/order ]; then
  for m in $(cat /lib/modules/pinvmm/order); do
    insmod "/lib/modules/pinvmm/$m.ko" || echo "@@PINVMM insmod $m failed"
  done
  fact modules "$(echo $(cat /lib/modules/pinvmm/order))"
  fact modules_uptime "$(up)"
fi
fact kernel "$(uname -r)"
fact cmdline "$(cat /proc/cmdline)"
if [ "$(uname -m)" = x86_64 ]; then
  # x86: "svm" or "vmx" and what kvm_amd / kvm_intel said about nesting and nested paging.
  k=$(dmesg | sed -En 's/.*(kvm_amd|kvm_intel): //p' | grep -iE 'nested|paging|ept|disabled|not supported|error' | tr '\n' ';' | sed 's/;$//')
  grep -qw svm /proc/cpuinfo && v=svm || { grep -qw vmx /proc/cpuinfo && v=vmx || v=none; }
  fact kvm_mode "$v: $k"
else
  fact kvm_mode "$(dmesg | grep -E 'kvm \[[0-9]+\]: .*(mode initialized|error|disabled|not available)' | head -1 | sed 's/.*kvm \[[0-9]*\]: //')"
fi
fact dev_kvm "$([ -c /dev/kvm ] && echo yes || echo no)"
fact movable_mib "$(awk '/^Node/ {z = $4} z == "Movable" && $1 == "present" {print int($2 / 256); exit}' /proc/zoneinfo)"
fact cma_total "$(awk '/^CmaTotal/ {print $2 " " $3}' /proc/meminfo)"
fact mem_total "$(awk '/^MemTotal/ {print $2 " " $3}' /proc/meminfo)"
fact nproc "$(nproc)"
fact io_uring_disabled "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo n/a)"
fact tracefs "$([ -e /sys/kernel/tracing/trace ] && echo yes || echo no)"

cd /results
fact cmd_start_uptime "$(up)"
echo "@@PINVMM cmd-begin"
sh /pinvmm/cmd.sh
rc=$?
fact cmd_end_uptime "$(up)"
echo "@@PINVMM cmd-end rc=$rc"

# Only emergencies on the console from here on, so no kernel line lands inside the base64.
echo 1 > /proc/sys/kernel/printk
cd /
echo "@@PINVMM results-begin"
tar -c -f - -C /results . | gzip | base64
echo "@@PINVMM results-end"
echo "@@PINVMM rc=$rc"
sync
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
