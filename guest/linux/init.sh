#!/bin/busybox sh
# shellcheck shell=dash
# /init of pinvmm's Linux guest initramfs (guest/linux/build copies this in).
# Mounts proc/sys/devtmpfs and a tmpfs, runs pinvmm-workload (parameters from the kernel
# command line, see guest/linux/README or docs/LINUX.md), then ends the VM: the build writes
# /etc/pinvmm-end, "poweroff -f" on arm64 (PSCI SYSTEM_OFF), "reboot -f" on x86 (reset:
# a stock x86 guest without ACPI cannot power off).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The churn file's own tmpfs: rootfs may be capped at half the RAM seen early in boot.
mount -t tmpfs -o mode=1777 tmpfs /tmp

echo "pinvmm-init: $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s, starting pinvmm-workload"
/bin/pinvmm-workload
rc=$?
echo "pinvmm-init: pinvmm-workload exited $rc at uptime $(cut -d' ' -f1 /proc/uptime) s"
# 0 ok, 1 failed, 2 bad parameters: the workload printed its line. Anything else (killed by
# the OOM killer, cannot execute): print a failed line for it, so the host never waits in vain.
if [ "$rc" -gt 2 ]; then
  line="pinvmm-result: {\"status\":\"failed\",\"fill_bytes\":0,\"seed\":0,\"checksum\":\"0x0000000000000000\",\"tmpfs_bytes\":0,\"forks\":0,\"errors\":1,\"elapsed_ms\":0}"
  { printf '\n%s\n' "$line" > /dev/console; } 2>/dev/null || echo "<2>$line" > /dev/kmsg
fi
sync
end=$(cat /etc/pinvmm-end 2>/dev/null || echo poweroff)
$end -f
# Still here: the kernel could not do it; ask through sysrq (o = power off, b = reboot).
sleep 2
if [ "$end" = reboot ]; then echo b; else echo o; fi > /proc/sysrq-trigger
