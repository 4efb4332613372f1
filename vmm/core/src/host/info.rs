// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Facts about the host, read from /proc and /sys: kernel, memory zones, counters.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// /proc/vmstat counters that tell whether a pin's migration failed, and why.
pub const VMSTAT_KEYS: &[&str] = &[
    "pgmigrate_success",
    "pgmigrate_fail",
    "thp_migration_success",
    "thp_migration_fail",
    "thp_migration_split",
    "unevictable_pgs_mlocked",
    "unevictable_pgs_munlocked",
    "unevictable_pgs_cleared",
    "unevictable_pgs_culled",
    "compact_isolated",
];

/// A snapshot of the interesting /proc/vmstat counters.
pub fn vmstat() -> BTreeMap<String, i64> {
    let text = fs::read_to_string("/proc/vmstat").unwrap_or_default();
    parse_vmstat(&text)
}

fn parse_vmstat(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            VMSTAT_KEYS
                .contains(&k)
                .then(|| Some((k.to_owned(), v.trim().parse().ok()?)))?
        })
        .collect()
}

/// `after - before` for every key present in both.
pub fn vmstat_delta(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter_map(|(k, a)| Some((k.clone(), a - before.get(k)?)))
        .collect()
}

/// A `/proc/self/status` value in KiB (VmPin, VmLck, VmRSS, ...).
pub fn status_kb(key: &str) -> Option<u64> {
    kb_field("/proc/self/status", key)
}

/// What a leaking VM would grow in this process: pinned and locked memory, open file
/// descriptors, resident memory. Leak checks (tests, `pinvmm stress`) compare two of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessCounters {
    pub vm_pin_kb: u64,
    pub vm_lck_kb: u64,
    pub open_fds: u64,
    pub rss_kb: u64,
}

impl ProcessCounters {
    /// The counters of this process now (0 where the kernel does not report one).
    pub fn now() -> Self {
        Self {
            vm_pin_kb: status_kb("VmPin").unwrap_or(0),
            vm_lck_kb: status_kb("VmLck").unwrap_or(0),
            open_fds: crate::sys::open_fds() as u64,
            rss_kb: status_kb("VmRSS").unwrap_or(0),
        }
    }

    /// Every counter with its name: `[(name, value)]`, in a fixed order.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("VmPin", self.vm_pin_kb),
            ("VmLck", self.vm_lck_kb),
            ("open fds", self.open_fds),
            ("VmRSS", self.rss_kb),
        ]
    }

    /// The names of the counters that moved since `before`: VmPin, VmLck and fds must be
    /// exactly back; RSS may grow by allocator noise up to `rss_slack_kb`.
    pub fn leaks_since(&self, before: &Self, rss_slack_kb: u64) -> Vec<&'static str> {
        let mut out = Vec::new();
        for ((name, b), (_, a)) in before.named().into_iter().zip(self.named()) {
            let leaked = if name == "VmRSS" {
                a > b + rss_slack_kb
            } else {
                a != b
            };
            if leaked {
                out.push(name);
            }
        }
        out
    }

    /// "VmPin 0 -> 0 kB, VmLck ..., open fds 9 -> 9, VmRSS ... kB" for logs.
    pub fn change_from(&self, before: &Self) -> String {
        before
            .named()
            .into_iter()
            .zip(self.named())
            .map(|((name, b), (_, a))| {
                let unit = if name == "open fds" { "" } else { " kB" };
                format!("{name} {b} -> {a}{unit}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// MemTotal in bytes.
pub fn mem_total_bytes() -> Option<u64> {
    meminfo_kb("MemTotal").map(|k| k * 1024)
}

/// A /proc/meminfo value in KiB (MemAvailable, Shmem, Mlocked, ...).
pub fn meminfo_kb(key: &str) -> Option<u64> {
    kb_field("/proc/meminfo", key)
}

/// The value of a `Key:   123 kB` line of a /proc file.
fn kb_field(path: &str, key: &str) -> Option<u64> {
    kb_in(&fs::read_to_string(path).ok()?, key)
}

/// The value of the `Key:   123 kB` line of `s`.
fn kb_in(s: &str, key: &str) -> Option<u64> {
    let line = s
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The sums of `/proc/PID/status` values (KiB) over every process but this one, e.g.
/// `["RssAnon", "VmLck"]`: what other processes hold, to tell their memory from ours in
/// host-wide counters. Processes that exit while being read are skipped.
pub fn other_processes_kb<const N: usize>(keys: [&str; N]) -> [u64; N] {
    let me = std::process::id().to_string();
    let mut sums = [0; N];
    let Ok(dir) = fs::read_dir("/proc") else {
        return sums;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        for (sum, key) in sums.iter_mut().zip(keys) {
            *sum += kb_in(&text, key).unwrap_or(0);
        }
    }
    sums
}

/// Pages present in ZONE_MOVABLE, over all nodes.
pub fn movable_pages() -> u64 {
    parse_movable(&fs::read_to_string("/proc/zoneinfo").unwrap_or_default())
}

fn parse_movable(text: &str) -> u64 {
    let mut in_movable = false;
    let mut total = 0;
    for l in text.lines() {
        if l.starts_with("Node ") {
            in_movable = l.trim_end().ends_with("zone  Movable")
                || l.split_whitespace().last() == Some("Movable");
        } else if in_movable && let Some(v) = l.trim().strip_prefix("present ") {
            total += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// CMA size in bytes (CmaTotal), if the kernel has CMA. Not the whole story: see
/// [`cma_bytes`].
pub fn cma_total_bytes() -> Option<u64> {
    meminfo_kb("CmaTotal").map(|k| k * 1024)
}

/// CMA memory in bytes as the page allocator sees it: the largest of CmaTotal, the zones'
/// `cma` page counts (/proc/zoneinfo) and the CMA pageblocks (/proc/pagetypeinfo, root). On
/// 7.0 kernels with kexec handover, the scratch areas are CMA pageblocks that CmaTotal (the
/// sum of the `cma=` areas) does not count, while zoneinfo and pagetypeinfo do.
pub fn cma_bytes() -> u64 {
    let page = crate::sys::PAGE_SIZE as u64;
    let zone = parse_zone_cma(&fs::read_to_string("/proc/zoneinfo").unwrap_or_default()) * page;
    let blocks =
        parse_cma_pageblocks(&fs::read_to_string("/proc/pagetypeinfo").unwrap_or_default()) * page;
    cma_total_bytes().unwrap_or(0).max(zone).max(blocks)
}

/// Sum of the zones' `cma` lines (pages; present since 5.x with CONFIG_CMA).
fn parse_zone_cma(zoneinfo: &str) -> u64 {
    zoneinfo
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cma "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// Pages in CMA pageblocks: the "Number of blocks type" table's CMA column times the
/// pageblock size ("Pages per block").
fn parse_cma_pageblocks(pagetypeinfo: &str) -> u64 {
    let per_block = pagetypeinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pages per block:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut col = None;
    let mut blocks = 0;
    for l in pagetypeinfo.lines() {
        if let Some(h) = l.strip_prefix("Number of blocks type") {
            col = h.split_whitespace().position(|w| w == "CMA");
        } else if let (Some(c), Some((_, counts))) = (col, l.split_once("zone")) {
            // "Node 0, zone   Normal            3     20      5      0      4      0"
            let v: Vec<&str> = counts.split_whitespace().collect();
            blocks += v
                .get(1 + c)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    blocks * per_block
}

/// Where a PFN lies, as far as a long-term pin cares: ZONE_MOVABLE and CMA pages must be
/// migrated before they can be pinned long-term.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfnZones {
    /// [start, end) PFN spans of ZONE_MOVABLE (/proc/zoneinfo).
    pub movable: Vec<(u64, u64)>,
    /// [start, end) PFN ranges of the CMA areas (debugfs `cma/*/base_pfn` and `count`),
    /// when they can be read.
    pub cma: Vec<(u64, u64)>,
}

impl PfnZones {
    pub fn probe() -> Self {
        Self {
            movable: parse_movable_spans(&fs::read_to_string("/proc/zoneinfo").unwrap_or_default()),
            cma: cma_areas(Path::new("/sys/kernel/debug/cma")),
        }
    }

    /// Whether `pfn` is in ZONE_MOVABLE or a known CMA area.
    pub fn unpinnable(&self, pfn: u64) -> bool {
        self.movable
            .iter()
            .chain(&self.cma)
            .any(|&(s, e)| (s..e).contains(&pfn))
    }
}

/// ZONE_MOVABLE [start_pfn, start_pfn + spanned) of every node.
fn parse_movable_spans(zoneinfo: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut movable, mut spanned) = (false, 0u64);
    for l in zoneinfo.lines() {
        if l.starts_with("Node ") {
            movable = l.split_whitespace().last() == Some("Movable");
            spanned = 0;
        } else if let Some(v) = l.trim().strip_prefix("spanned") {
            spanned = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.trim().strip_prefix("start_pfn:") {
            let start: u64 = v.trim().parse().unwrap_or(0);
            if movable && spanned > 0 {
                out.push((start, start + spanned));
            }
        }
    }
    out
}

/// CMA areas from debugfs (`<dir>/<area>/base_pfn` and `count`, in pages).
fn cma_areas(dir: &Path) -> Vec<(u64, u64)> {
    let num = |p: PathBuf| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    let mut out: Vec<(u64, u64)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let base = num(e.path().join("base_pfn"))?;
            let count = num(e.path().join("count"))?;
            Some((base, base + count))
        })
        .collect();
    out.sort_unstable();
    out
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The upstream version of the running kernel: Debian's `uname -r` is an ABI name
/// (6.1.0-56-arm64) while /proc/version carries the real one ("Debian 6.1.192-1").
pub fn kernel_version() -> String {
    let release = kernel_release();
    let version = fs::read_to_string("/proc/version").unwrap_or_default();
    upstream_version(&version, &release)
}

fn upstream_version(proc_version: &str, release: &str) -> String {
    proc_version
        .split_once(" Debian ")
        .and_then(|(_, rest)| rest.split(|c: char| c == '-' || c.is_whitespace()).next())
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .unwrap_or_else(|| release.to_owned())
}

/// CPU model name.
pub fn cpu_model() -> String {
    let s = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "CPU part" | "Hardware").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Which KVM implementation serves /dev/kvm.
pub fn kvm_backend() -> String {
    let has = |m: &str| std::path::Path::new(&format!("/sys/module/{m}")).exists();
    if cfg!(target_arch = "aarch64") {
        return arm64_kvm_mode()
            .unwrap_or_else(|| "arm64 (mode unknown: dmesg not readable)".into());
    }
    if has("kvm_pvm") {
        "pvm (no VMX/SVM: guest CPL0 is emulated, CPL3 runs natively)".into()
    } else if has("kvm_intel") {
        "vmx (kvm_intel)".into()
    } else if has("kvm_amd") {
        "svm (kvm_amd)".into()
    } else if has("kvm") {
        "kvm (backend module unknown)".into()
    } else {
        "none".into()
    }
}

/// arm64 KVM mode from the kernel log ("Hyp nVHE mode", "Protected nVHE mode", "VHE mode").
fn arm64_kvm_mode() -> Option<String> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().rev().find_map(|l| {
        let i = l.find("kvm [")?;
        let rest = &l[i..];
        let msg = rest.split_once("]: ")?.1;
        msg.contains(" mode").then(|| msg.trim().to_owned())
    })
}

/// Whether the running kernel carries the upstream GUP fix ("mm: better GUP pin
/// lru_add_drain_all()", Hugh Dickins, 2025): a heuristic by version. Kernels built with the fix
/// reverted are not detected: `pinvmm gup-check` measures instead of guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GupFix {
    Fixed,
    NotFixed,
    Unknown,
}

/// Versions (major, minor, first fixed patch) per stable branch (docs/DESIGN.md §5).
const FIXED_FROM: &[(u32, u32, u32)] = &[(6, 16, 9), (6, 12, 49), (6, 6, 109), (6, 1, 155)];

pub fn gup_fix_status(release: &str) -> GupFix {
    let nums: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    let (maj, min, patch) = match nums.as_slice() {
        [a, b, c] => (*a, *b, *c),
        [a, b] => (*a, *b, 0),
        _ => return GupFix::Unknown,
    };
    if (maj, min) >= (6, 17) {
        return GupFix::Fixed;
    }
    match FIXED_FROM.iter().find(|(a, b, _)| (*a, *b) == (maj, min)) {
        Some((_, _, p)) if patch >= *p => GupFix::Fixed,
        Some(_) => GupFix::NotFixed,
        // The bug came with the batched mlock (v5.18); older branches never had it.
        None if (maj, min) < (5, 18) => GupFix::Fixed,
        None => GupFix::Unknown,
    }
}

/// Facts about the host the VM ran on.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub kernel_version: String,
    pub gup_fix: GupFix,
    pub cpu: String,
    pub online_cpus: usize,
    pub kvm_backend: String,
    pub movable_bytes: u64,
    pub cma_bytes: u64,
}

impl HostFacts {
    pub fn probe() -> Self {
        let version = kernel_version();
        Self {
            kernel_release: kernel_release(),
            gup_fix: gup_fix_status(&version),
            kernel_version: version,
            cpu: cpu_model(),
            online_cpus: crate::sys::allowed_cpus().len(),
            kvm_backend: kvm_backend(),
            movable_bytes: movable_pages() * crate::sys::PAGE_SIZE as u64,
            cma_bytes: cma_bytes(),
        }
    }

    /// Whether a pin can need a migration at all here.
    pub fn has_unpinnable_memory(&self) -> bool {
        self.movable_bytes > 0 || self.cma_bytes > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CMA that CmaTotal does not count (kexec handover scratch on 7.0) still shows in the
    /// zones' `cma` lines and in the CMA pageblocks.
    #[test]
    fn cma_comes_from_zoneinfo_and_pagetypeinfo() {
        let zoneinfo = "Node 0, zone      DMA\n  pages free     1000\n        cma      16384\n  start_pfn:           262144\nNode 0, zone   Movable\n  pages free     10\n        spanned  131072\n        present  131072\n        cma      0\n  start_pfn:           393216\n";
        assert_eq!(parse_zone_cma(zoneinfo), 16384);
        assert_eq!(parse_movable_spans(zoneinfo), vec![(393216, 524288)]);
        let pti = "Page block order: 9\nPages per block:  512\n\nNumber of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate \nNode 0, zone      DMA            3           20            5            0           32            0 \nNode 0, zone   Normal            1            7            0            0            2            0 \n";
        assert_eq!(parse_cma_pageblocks(pti), 34 * 512);
        assert_eq!(parse_cma_pageblocks("Pages per block:  512\n"), 0);
        let z = PfnZones {
            movable: vec![(100, 200)],
            cma: vec![(10, 20)],
        };
        assert!(z.unpinnable(150) && z.unpinnable(10) && !z.unpinnable(20) && !z.unpinnable(5));
        let dir = std::env::temp_dir().join(format!("pinvmm-cma-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("reserved")).unwrap();
        std::fs::write(dir.join("reserved/base_pfn"), "262144\n").unwrap();
        std::fs::write(dir.join("reserved/count"), "16384\n").unwrap();
        assert_eq!(cma_areas(&dir), vec![(262144, 278528)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn process_counters_flag_exact_and_slack_leaks() {
        let before = ProcessCounters {
            vm_pin_kb: 100,
            vm_lck_kb: 200,
            open_fds: 10,
            rss_kb: 5000,
        };
        let mut after = before;
        after.rss_kb += 2048;
        assert!(after.leaks_since(&before, 2048).is_empty());
        after.rss_kb += 1;
        after.open_fds -= 1; // a closed fd is a change too: the baseline must be exact
        assert_eq!(after.leaks_since(&before, 2048), ["open fds", "VmRSS"]);
        assert!(after.change_from(&before).contains("open fds 10 -> 9"));
    }

    #[test]
    fn fix_heuristic() {
        assert_eq!(gup_fix_status("6.12.43+deb12-arm64"), GupFix::NotFixed);
        assert_eq!(gup_fix_status("6.12.118+deb13-arm64"), GupFix::Fixed);
        assert_eq!(gup_fix_status("6.1.192"), GupFix::Fixed);
        assert_eq!(gup_fix_status("6.1.150"), GupFix::NotFixed);
        assert_eq!(gup_fix_status("7.3.4+deb13-arm64"), GupFix::Fixed);
        assert_eq!(gup_fix_status("6.18.44-fc"), GupFix::Fixed);
        assert_eq!(gup_fix_status("6.8.0"), GupFix::Unknown);
        assert_eq!(gup_fix_status("5.10.0"), GupFix::Fixed);
        assert_eq!(gup_fix_status("garbage"), GupFix::Unknown);
    }

    #[test]
    fn debian_abi_names_resolve_to_the_upstream_version() {
        let v = "Linux version 6.1.0-56-arm64 (debian-kernel@lists.debian.org) (gcc 12) #1 SMP Debian 6.1.192-1 (2025-10-01)";
        assert_eq!(upstream_version(v, "6.1.0-56-arm64"), "6.1.192");
        assert_eq!(
            upstream_version("Linux version 6.18.44-fc", "6.18.44-fc"),
            "6.18.44-fc"
        );
    }

    #[test]
    fn parses_proc_files() {
        let z = "Node 0, zone   Normal\n  pages free 3\n        present  100\nNode 0, zone  Movable\n  pages free 1\n        present  131072\n";
        assert_eq!(parse_movable(z), 131072);
        let v = parse_vmstat("pgmigrate_fail 3\nnr_free_pages 9\npgmigrate_success 10\n");
        assert_eq!(v.len(), 2);
        let mut after = v.clone();
        *after.get_mut("pgmigrate_fail").unwrap() += 2;
        assert_eq!(vmstat_delta(&v, &after)["pgmigrate_fail"], 2);
    }
}
