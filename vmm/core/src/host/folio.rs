// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The state of the folio behind one page of this process, as userspace can read it: its PFN
//! (`/proc/self/pagemap`), its zone and whether it lies in a CMA area (`/proc/zoneinfo`, the
//! kernel log, `/proc/pagetypeinfo`), its flags (`/proc/kpageflags`) and its map count
//! (`/proc/kpagecount`). Read at a failed long-term pin, it says what the kernel's migration
//! saw; docs/FAILURES.md has the measurements behind every flag rule.
//!
//! PFNs, flags and counts need root (CAP_SYS_ADMIN): without it pagemap reports PFN 0 and the
//! kpage files do not open, and [`FolioReader::note`] says so. The reference count, which is
//! what decides a migration, is not readable from userspace at all.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// Bits of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h; `MLOCKED` is one of the
/// kernel-internal bits of include/linux/kernel-page-flags.h, stable since 2.6.32).
pub mod kpf {
    pub const LOCKED: u32 = 0;
    pub const REFERENCED: u32 = 2;
    pub const UPTODATE: u32 = 3;
    pub const DIRTY: u32 = 4;
    pub const LRU: u32 = 5;
    pub const ACTIVE: u32 = 6;
    pub const WRITEBACK: u32 = 8;
    pub const BUDDY: u32 = 10;
    pub const MMAP: u32 = 11;
    pub const ANON: u32 = 12;
    pub const SWAPBACKED: u32 = 14;
    pub const COMPOUND_HEAD: u32 = 15;
    pub const COMPOUND_TAIL: u32 = 16;
    pub const HUGE: u32 = 17;
    pub const UNEVICTABLE: u32 = 18;
    pub const NOPAGE: u32 = 20;
    pub const THP: u32 = 22;
    pub const MLOCKED: u32 = 33;
}

/// The flags reported by name, in this order (`KSM` is left out on purpose: 6.12's
/// kpageflags sets it on every anonymous page).
const NAMED: &[(u32, &str)] = &[
    (kpf::LRU, "lru"),
    (kpf::ACTIVE, "active"),
    (kpf::MLOCKED, "mlocked"),
    (kpf::UNEVICTABLE, "unevictable"),
    (kpf::SWAPBACKED, "swapbacked"),
    (kpf::DIRTY, "dirty"),
    (kpf::MMAP, "mmap"),
    (kpf::THP, "thp"),
    (kpf::ANON, "anon"),
    (kpf::REFERENCED, "referenced"),
    (kpf::UPTODATE, "uptodate"),
    (kpf::LOCKED, "locked"),
    (kpf::WRITEBACK, "writeback"),
    (kpf::COMPOUND_HEAD, "compound_head"),
    (kpf::COMPOUND_TAIL, "compound_tail"),
    (kpf::HUGE, "huge"),
    (kpf::BUDDY, "buddy"),
    (kpf::NOPAGE, "nopage"),
];

/// One page's /proc/kpageflags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageFlags(pub u64);

impl PageFlags {
    pub fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1u64 << bit) != 0
    }
    pub fn lru(self) -> bool {
        self.has(kpf::LRU)
    }
    pub fn active(self) -> bool {
        self.has(kpf::ACTIVE)
    }
    pub fn mlocked(self) -> bool {
        self.has(kpf::MLOCKED)
    }
    pub fn unevictable(self) -> bool {
        self.has(kpf::UNEVICTABLE)
    }
    pub fn swapbacked(self) -> bool {
        self.has(kpf::SWAPBACKED)
    }
    pub fn dirty(self) -> bool {
        self.has(kpf::DIRTY)
    }
    pub fn mmap(self) -> bool {
        self.has(kpf::MMAP)
    }
    pub fn thp(self) -> bool {
        self.has(kpf::THP)
    }
    pub fn anon(self) -> bool {
        self.has(kpf::ANON)
    }

    /// The set flags among those this module names, e.g. `["lru", "mlocked", "swapbacked"]`.
    pub fn names(self) -> Vec<&'static str> {
        NAMED
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, n)| *n)
            .collect()
    }

    /// Four letters for the flags the verdict reads — `L` lru, `A` active, `M` mlocked, `U`
    /// unevictable — with a dot for a clear flag: `L.M.` is "on the LRU, mlocked, not yet
    /// unevictable". The notation of docs/FAILURES.md.
    pub fn short(self) -> String {
        [
            (self.lru(), 'L'),
            (self.active(), 'A'),
            (self.mlocked(), 'M'),
            (self.unevictable(), 'U'),
        ]
        .iter()
        .map(|&(set, c)| if set { c } else { '.' })
        .collect()
    }
}

/// Failures opening the folio-state sources.
#[derive(Debug, thiserror::Error)]
pub enum FolioError {
    #[error("cannot open {path}: {err}")]
    Open { path: &'static str, err: io::Error },
    #[error("cannot read {path} at offset {offset:#x}: {err}")]
    Read {
        path: &'static str,
        offset: u64,
        err: io::Error,
    },
}

/// A range of PFNs `[start, end)` with a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfnRange {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// Where each PFN is: zone spans from /proc/zoneinfo, CMA areas from the kernel log (or
/// debugfs), and per zone how many pages are CMA (zoneinfo's `cma` line) and how many
/// pageblocks (/proc/pagetypeinfo). Zones can overlap in span; the first zone listed wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneMap {
    pub zones: Vec<PfnRange>,
    /// Pages of CMA per zone name (zoneinfo `cma`), only zones that have some.
    pub zone_cma_pages: Vec<(String, u64)>,
    /// CMA pageblocks per zone name (/proc/pagetypeinfo), only zones that have some.
    pub zone_cma_blocks: Vec<(String, u64)>,
    /// The CMA areas' PFN ranges, where the kernel told (kernel log, debugfs).
    pub cma_areas: Vec<PfnRange>,
    /// Why a CMA area's range is unknown, if one is.
    pub cma_note: Option<String>,
}

/// Where one PFN is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The zone whose span holds the PFN (`Movable`, `Normal`, `DMA`, ...), or `unknown`.
    pub zone: String,
    /// In a CMA area: `Some(true/false)` where the areas are known; `None` when the PFN's
    /// zone holds CMA pages but the areas' ranges are unknown.
    pub cma: Option<bool>,
    /// A long-term pin must migrate it: ZONE_MOVABLE or CMA (`None`: cannot tell).
    pub unpinnable: Option<bool>,
}

impl ZoneMap {
    /// [`ZoneMap::read`] once per process: zones and CMA areas do not move while it runs
    /// (short of memory hotplug), and the kernel log is long.
    pub fn cached() -> &'static Self {
        static MAP: std::sync::OnceLock<ZoneMap> = std::sync::OnceLock::new();
        MAP.get_or_init(Self::read)
    }

    /// Reads /proc/zoneinfo, /proc/pagetypeinfo (root), the CMA areas from debugfs
    /// (`/sys/kernel/debug/cma/*/base_pfn`, when mounted and built) or the kernel log
    /// (`/dev/kmsg`, root or dmesg_restrict=0). Missing sources leave fields empty.
    pub fn read() -> Self {
        let zoneinfo = fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
        let pagetypeinfo = fs::read_to_string("/proc/pagetypeinfo").unwrap_or_default();
        let mut m = Self::parse(&zoneinfo, &pagetypeinfo);
        let any_cma = !m.zone_cma_pages.is_empty() || !m.zone_cma_blocks.is_empty();
        if any_cma {
            let areas = cma_areas_debugfs();
            m.cma_areas = if areas.is_empty() {
                parse_cma_log(&kernel_log())
            } else {
                areas
            };
            if m.cma_areas.is_empty() {
                m.cma_note = Some(
                    "the CMA area's PFN range is unknown (no 'cma: Reserved ... at' line in the kernel log, which needs root or dmesg_restrict=0, and no debugfs cma/): pages in a zone with CMA pageblocks are reported as possibly CMA".into(),
                );
            }
        }
        m
    }

    /// The zone spans and CMA counts of `zoneinfo` and `pagetypeinfo` (text of the /proc files).
    pub fn parse(zoneinfo: &str, pagetypeinfo: &str) -> Self {
        let mut m = Self::default();
        let mut zone = String::new();
        let mut spanned = 0u64;
        for l in zoneinfo.lines() {
            let t = l.trim();
            if let Some(rest) = l.strip_prefix("Node ") {
                zone = rest
                    .split_once("zone")
                    .map(|(_, z)| z.trim().to_owned())
                    .unwrap_or_default();
                spanned = 0;
            } else if let Some(v) = t.strip_prefix("spanned") {
                spanned = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = t.strip_prefix("cma") {
                // "cma      16384" (not "cma_..." lines)
                if v.starts_with(' ')
                    && let Ok(n) = v.trim().parse::<u64>()
                    && n > 0
                {
                    m.zone_cma_pages.push((zone.clone(), n));
                }
            } else if let Some(v) = t.strip_prefix("start_pfn:")
                && let Ok(start) = v.trim().parse::<u64>()
                && spanned > 0
            {
                m.zones.push(PfnRange {
                    name: zone.clone(),
                    start,
                    end: start + spanned,
                });
            }
        }
        // "Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate"
        // "Node 0, zone  Movable           28          196            0            0           32            0"
        let mut cma_col = None;
        for l in pagetypeinfo.lines() {
            if l.starts_with("Number of blocks type") {
                cma_col = l
                    .trim_start_matches("Number of blocks type")
                    .split_whitespace()
                    .position(|c| c == "CMA");
                continue;
            }
            let Some(col) = cma_col else { continue };
            let Some((head, counts)) = l.split_once("zone") else {
                continue;
            };
            if !head.starts_with("Node") {
                continue;
            }
            let mut it = counts.split_whitespace();
            let Some(name) = it.next() else { continue };
            if let Some(n) = it.nth(col).and_then(|v| v.parse::<u64>().ok())
                && n > 0
            {
                m.zone_cma_blocks.push((name.to_owned(), n));
            }
        }
        m
    }

    /// Whether a long-term pin must migrate `pfn` (ZONE_MOVABLE or CMA), without allocating.
    pub fn unpinnable(&self, pfn: u64) -> Option<bool> {
        if self
            .cma_areas
            .iter()
            .any(|a| (a.start..a.end).contains(&pfn))
        {
            return Some(true);
        }
        let zone = self
            .zones
            .iter()
            .find(|z| (z.start..z.end).contains(&pfn))?;
        if zone.name == "Movable" {
            return Some(true);
        }
        let zone_has_cma = self.zone_cma_pages.iter().any(|(z, _)| *z == zone.name)
            || self.zone_cma_blocks.iter().any(|(z, _)| *z == zone.name);
        (!zone_has_cma || !self.cma_areas.is_empty()).then_some(false)
    }

    /// Where `pfn` is.
    pub fn locate(&self, pfn: u64) -> Placement {
        let zone = self
            .zones
            .iter()
            .find(|z| (z.start..z.end).contains(&pfn))
            .map_or_else(|| "unknown".to_owned(), |z| z.name.clone());
        let zone_has_cma = self.zone_cma_pages.iter().any(|(z, _)| *z == zone)
            || self.zone_cma_blocks.iter().any(|(z, _)| *z == zone);
        let cma = if self
            .cma_areas
            .iter()
            .any(|a| (a.start..a.end).contains(&pfn))
        {
            Some(true)
        } else if !zone_has_cma || !self.cma_areas.is_empty() {
            Some(false)
        } else {
            None
        };
        let unpinnable = match (zone.as_str(), cma) {
            ("Movable", _) | (_, Some(true)) => Some(true),
            ("unknown", _) | (_, None) => None,
            _ => Some(false),
        };
        Placement {
            zone,
            cma,
            unpinnable,
        }
    }
}

/// The CMA areas from debugfs (`/sys/kernel/debug/cma/NAME/{base_pfn,count}`), if present.
fn cma_areas_debugfs() -> Vec<PfnRange> {
    let Ok(dir) = fs::read_dir("/sys/kernel/debug/cma") else {
        return Vec::new();
    };
    let num =
        |p: std::path::PathBuf| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    dir.flatten()
        .filter_map(|e| {
            let start = num(e.path().join("base_pfn"))?;
            let count = num(e.path().join("count"))?;
            Some(PfnRange {
                name: format!("CMA {}", e.file_name().to_string_lossy()),
                start,
                end: start + count,
            })
        })
        .collect()
}

/// The kernel log as far as /dev/kmsg still holds it (one record per read; non-blocking).
fn kernel_log() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return String::new();
    };
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    // A bound, so a log that grows while we read cannot keep us here.
    for _ in 0..100_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            // EPIPE: records overwritten since the last read; go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// CMA areas from kernel-log lines `cma: Reserved 64 MiB at 0x00000000b8a00000 ...` (the
/// `/dev/kmsg` prefix `6,12,0,-;` or dmesg's `[    0.000000] ` before it is skipped). Newer
/// kernels print multi-range areas as `Reserved N MiB in K ranges`, without an address: those
/// stay unknown.
pub fn parse_cma_log(log: &str) -> Vec<PfnRange> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    for l in log.lines() {
        let Some(i) = l.find("cma: Reserved ") else {
            continue;
        };
        let rest = &l[i + "cma: Reserved ".len()..];
        let mut w = rest.split_whitespace();
        let (Some(mib), Some("MiB"), Some("at"), Some(addr)) =
            (w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        let (Ok(mib), Ok(base)) = (
            mib.parse::<u64>(),
            u64::from_str_radix(addr.trim_start_matches("0x"), 16),
        ) else {
            continue;
        };
        out.push(PfnRange {
            name: "CMA".into(),
            start: base / PAGE,
            end: base / PAGE + mib * (1 << 20) / PAGE,
        });
    }
    out
}

/// One page's state, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolioState {
    /// The PFN, when present and readable.
    pub pfn: Option<u64>,
    /// `present` | `absent` (not mapped in this view) | `swapped` | `unreadable` (PFN hidden:
    /// not root).
    pub page: String,
    pub zone: Option<String>,
    pub cma: Option<bool>,
    /// Must a long-term pin migrate it (ZONE_MOVABLE or CMA)?
    pub unpinnable: Option<bool>,
    /// The raw /proc/kpageflags word, hex (`0x200004838`).
    pub kpageflags: Option<String>,
    /// The set flags by name (lru, active, mlocked, unevictable, swapbacked, dirty, mmap, thp, ...).
    pub flags: Vec<String>,
    /// `LAMU` letters, a dot for a clear flag: `L.M.` = on the LRU, mlocked, not unevictable.
    pub short: Option<String>,
    /// /proc/kpagecount: how many page tables map the page (not its reference count).
    pub mapcount: Option<u64>,
}

impl FolioState {
    /// The decoded flags, if they were read.
    pub fn page_flags(&self) -> Option<PageFlags> {
        let h = self.kpageflags.as_deref()?;
        u64::from_str_radix(h.trim_start_matches("0x"), 16)
            .ok()
            .map(PageFlags)
    }

    /// A state from recorded values (tests, and the board's captured inputs).
    pub fn from_raw(pfn: u64, kpageflags: u64, mapcount: u64, zones: &ZoneMap) -> Self {
        let p = zones.locate(pfn);
        let f = PageFlags(kpageflags);
        Self {
            pfn: Some(pfn),
            page: "present".into(),
            zone: Some(p.zone),
            cma: p.cma,
            unpinnable: p.unpinnable,
            kpageflags: Some(format!("{kpageflags:#x}")),
            flags: f.names().into_iter().map(String::from).collect(),
            short: Some(f.short()),
            mapcount: Some(mapcount),
        }
    }

    /// One line: `pfn 0xa02f4 (Movable) L.M. [lru mlocked swapbacked dirty mmap] mapcount 2`.
    pub fn describe(&self) -> String {
        let Some(pfn) = self.pfn else {
            return format!("page {}", self.page);
        };
        let mut place = self.zone.clone().unwrap_or_else(|| "zone unknown".into());
        match self.cma {
            Some(true) => place.push_str(", CMA"),
            None => place.push_str(", maybe CMA"),
            Some(false) => {}
        }
        let flags = match &self.short {
            Some(s) => format!(" {s} [{}]", self.flags.join(" ")),
            None => " (flags unreadable)".into(),
        };
        let count = self
            .mapcount
            .map(|c| format!(" mapcount {c}"))
            .unwrap_or_default();
        format!("pfn {pfn:#x} ({place}){flags}{count}")
    }
}

/// Reads [`FolioState`]s of this process's pages. Open once (at VM build), read at a failure:
/// a read is three `pread`s and no allocation beyond the result.
#[derive(Debug)]
pub struct FolioReader {
    pagemap: File,
    kpageflags: Option<File>,
    kpagecount: Option<File>,
    zones: &'static ZoneMap,
    note: Option<String>,
}

impl FolioReader {
    /// Opens /proc/self/pagemap (an error if that fails: no procfs) and, where readable, the
    /// kpage files; reads the zone map.
    pub fn open() -> Result<Self, FolioError> {
        let pagemap = File::open("/proc/self/pagemap").map_err(|err| FolioError::Open {
            path: "/proc/self/pagemap",
            err,
        })?;
        let mut notes = Vec::new();
        let mut open = |path: &'static str| match File::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                notes.push(format!("{path}: {e}"));
                None
            }
        };
        let kpageflags = open("/proc/kpageflags");
        let kpagecount = open("/proc/kpagecount");
        let note = (!notes.is_empty()).then(|| {
            format!(
                "folio flags unreadable ({}): they need root (CAP_SYS_ADMIN)",
                notes.join("; ")
            )
        });
        Ok(Self {
            pagemap,
            kpageflags,
            kpagecount,
            zones: ZoneMap::cached(),
            note,
        })
    }

    /// What this reader cannot see, if anything (not root; CMA area unknown).
    pub fn note(&self) -> Option<String> {
        match (&self.note, &self.zones.cma_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.clone().or_else(|| b.clone()),
        }
    }

    pub fn zones(&self) -> &ZoneMap {
        self.zones
    }

    /// The PFN and flags of the page at `addr`, and whether a pin must migrate it — two
    /// `pread`s and no allocation: for scanning many pages right after a failure, when an
    /// allocation's fresh pages would add to the LRU batches being looked at.
    pub fn flags_at(&self, addr: u64) -> Option<(u64, PageFlags, Option<bool>)> {
        let entry = read_u64(&self.pagemap, "/proc/self/pagemap", addr / 4096 * 8).ok()?;
        let pfn = entry & ((1 << 55) - 1);
        if entry >> 63 & 1 == 0 || pfn == 0 {
            return None;
        }
        let f = read_u64(self.kpageflags.as_ref()?, "/proc/kpageflags", pfn * 8).ok()?;
        Some((pfn, PageFlags(f), self.zones.unpinnable(pfn)))
    }

    /// The state of the page at virtual address `addr` of this process.
    pub fn read(&self, addr: u64) -> Result<FolioState, FolioError> {
        let vpn = addr / 4096;
        let entry = read_u64(&self.pagemap, "/proc/self/pagemap", vpn * 8)?;
        let mut s = FolioState {
            pfn: None,
            page: String::new(),
            zone: None,
            cma: None,
            unpinnable: None,
            kpageflags: None,
            flags: Vec::new(),
            short: None,
            mapcount: None,
        };
        let present = entry >> 63 & 1 == 1;
        let swapped = entry >> 62 & 1 == 1;
        let pfn = entry & ((1 << 55) - 1);
        s.page = match (present, swapped, pfn) {
            (false, true, _) => "swapped",
            (false, false, _) => "absent",
            (true, _, 0) => "unreadable",
            (true, _, _) => "present",
        }
        .into();
        if s.page != "present" {
            return Ok(s);
        }
        s.pfn = Some(pfn);
        let p = self.zones.locate(pfn);
        (s.zone, s.cma, s.unpinnable) = (Some(p.zone), p.cma, p.unpinnable);
        if let Some(f) = &self.kpageflags {
            let v = read_u64(f, "/proc/kpageflags", pfn * 8)?;
            let flags = PageFlags(v);
            s.kpageflags = Some(format!("{v:#x}"));
            s.flags = flags.names().into_iter().map(String::from).collect();
            s.short = Some(flags.short());
        }
        if let Some(f) = &self.kpagecount {
            s.mapcount = Some(read_u64(f, "/proc/kpagecount", pfn * 8)?);
        }
        Ok(s)
    }
}

fn read_u64(f: &File, path: &'static str, offset: u64) -> Result<u64, FolioError> {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset)
        .map_err(|err| FolioError::Read { path, offset, err })?;
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/zoneinfo of the arm64 board, 6.12.43, movablecore=512M (trimmed to the lines read).
    const ZONEINFO_612_MOVABLE: &str = "Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 0
  pages free     354399
        spanned  393216
        present  393216
        managed  384383
        cma      0
      nr_free_cma  0
  start_pfn:           262144
Node 0, zone    DMA32
  pages free     0
        spanned  0
        present  0
        managed  0
        cma      0
Node 0, zone   Normal
        spanned  0
        present  0
        managed  0
        cma      0
Node 0, zone  Movable
  pages free     115563
        spanned  131072
        present  131072
        managed  116365
        cma      16384
      nr_free_cma  16192
  start_pfn:           655360
Node 0, zone   Device
  pages free     0
        spanned  0
        present  0
        managed  0
";

    const PAGETYPEINFO_612_MOVABLE: &str = "Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10 
Node    0, zone      DMA, type    Unmovable      0      0      0      0      1      1      1      0      1      0      0 
Node    0, zone  Movable, type          CMA      0      0      0      0      0      0      1      0      1      1     15 

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate 
Node 0, zone      DMA           22          744            2            0            0            0 
Node 0, zone  Movable           28          196            0            0           32            0 
";

    const KMSG_CMA: &str = "6,0,0,-;cma: Reserved 64 MiB at 0x00000000b8a00000 on node -1\n";
    const DMESG_CMA_1536: &str =
        "[    0.000000] cma: Reserved 1536 MiB at 0x000000005ca00000 on node -1\n";

    fn board_612() -> ZoneMap {
        let mut m = ZoneMap::parse(ZONEINFO_612_MOVABLE, PAGETYPEINFO_612_MOVABLE);
        m.cma_areas = parse_cma_log(KMSG_CMA);
        m
    }

    #[test]
    fn zoneinfo_and_pagetypeinfo_parse() {
        let m = ZoneMap::parse(ZONEINFO_612_MOVABLE, PAGETYPEINFO_612_MOVABLE);
        assert_eq!(
            m.zones,
            vec![
                PfnRange {
                    name: "DMA".into(),
                    start: 0x40000,
                    end: 0xa0000
                },
                PfnRange {
                    name: "Movable".into(),
                    start: 0xa0000,
                    end: 0xc0000
                },
            ]
        );
        assert_eq!(m.zone_cma_pages, vec![("Movable".into(), 16384)]);
        assert_eq!(m.zone_cma_blocks, vec![("Movable".into(), 32)]);
    }

    #[test]
    fn cma_log_lines_parse_in_both_formats() {
        assert_eq!(
            parse_cma_log(KMSG_CMA),
            vec![PfnRange {
                name: "CMA".into(),
                start: 0xb8a00,
                end: 0xbca00
            }]
        );
        assert_eq!(
            parse_cma_log(DMESG_CMA_1536),
            vec![PfnRange {
                name: "CMA".into(),
                start: 0x5ca00,
                end: 0xbca00
            }]
        );
        // multi-range areas print no address: nothing to locate
        assert!(parse_cma_log("cma: Reserved 64 MiB in 2 ranges\n").is_empty());
        assert!(parse_cma_log("cma: Reserved lots at nowhere\n").is_empty());
    }

    #[test]
    fn placement_follows_zone_spans_and_cma_areas() {
        let m = board_612();
        let p = m.locate(0xa02f4);
        assert_eq!(
            (p.zone.as_str(), p.cma, p.unpinnable),
            ("Movable", Some(false), Some(true))
        );
        let p = m.locate(0xb8a10); // the default CMA area inside the Movable span
        assert_eq!(
            (p.zone.as_str(), p.cma, p.unpinnable),
            ("Movable", Some(true), Some(true))
        );
        let p = m.locate(0x445f3);
        assert_eq!(
            (p.zone.as_str(), p.cma, p.unpinnable),
            ("DMA", Some(false), Some(false))
        );
        let p = m.locate(0x10);
        assert_eq!((p.zone.as_str(), p.unpinnable), ("unknown", None));
        for pfn in [0xa02f4, 0xb8a10, 0x445f3, 0x10] {
            assert_eq!(m.unpinnable(pfn), m.locate(pfn).unpinnable, "{pfn:#x}");
        }
        // CMA pageblocks in a zone, area unknown: "maybe"
        let mut m2 = m.clone();
        m2.cma_areas.clear();
        let p = m2.locate(0x44000);
        assert_eq!((p.cma, p.unpinnable), (Some(false), Some(false)));
        m2.zone_cma_blocks.push(("DMA".into(), 3));
        let p = m2.locate(0x44000);
        assert_eq!((p.cma, p.unpinnable), (None, None));
    }

    /// Real kpageflags words captured on the arm64 board (docs/FAILURES.md §2).
    #[test]
    fn board_flags_decode() {
        let cases: &[(u64, &str, &[&str])] = &[
            // 6.12.43: page cache after the loader, before the fault-in
            (
                0x4838,
                "L...",
                &["lru", "swapbacked", "dirty", "mmap", "uptodate"],
            ),
            // pending mlock batch (F/B of a failed pin), both kernels
            (
                0x200004838,
                "L.M.",
                &["lru", "mlocked", "swapbacked", "dirty", "mmap", "uptodate"],
            ),
            // batch processed (unevictable)
            (
                0x200044838,
                "L.MU",
                &[
                    "lru",
                    "mlocked",
                    "unevictable",
                    "swapbacked",
                    "dirty",
                    "mmap",
                    "uptodate",
                ],
            ),
            // 6.12.43 right after a failed pin: isolated, put back (MGLRU sets active)
            (
                0x20000485c,
                ".AM.",
                &[
                    "active",
                    "mlocked",
                    "swapbacked",
                    "dirty",
                    "mmap",
                    "referenced",
                    "uptodate",
                ],
            ),
            // 7.3 right after a failed pin
            (
                0x20000481c,
                "..M.",
                &[
                    "mlocked",
                    "swapbacked",
                    "dirty",
                    "mmap",
                    "referenced",
                    "uptodate",
                ],
            ),
            // fresh page in the LRU-add batch (6.12.43, MGLRU: active)
            (
                0x200004858,
                ".AM.",
                &[
                    "active",
                    "mlocked",
                    "swapbacked",
                    "dirty",
                    "mmap",
                    "uptodate",
                ],
            ),
            // fresh + noise after a failed pin
            (
                0x200044818,
                "..MU",
                &[
                    "mlocked",
                    "unevictable",
                    "swapbacked",
                    "dirty",
                    "mmap",
                    "uptodate",
                ],
            ),
            // anonymous, 6.12.43: the KSM bit (21) is set on every anon page there; not reported
            (
                0x600205808,
                "..M.",
                &["mlocked", "swapbacked", "mmap", "anon", "uptodate"],
            ),
        ];
        for &(raw, short, names) in cases {
            let f = PageFlags(raw);
            assert_eq!(f.short(), short, "{raw:#x}");
            let mut got = f.names();
            let mut want = names.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{raw:#x}");
        }
        assert!(!PageFlags(0x600205808).names().contains(&"ksm"));
    }

    #[test]
    fn states_from_raw_describe_themselves() {
        let s = FolioState::from_raw(0xa02f4, 0x200004838, 2, &board_612());
        assert_eq!(s.unpinnable, Some(true));
        assert_eq!(s.page_flags(), Some(PageFlags(0x200004838)));
        assert_eq!(
            s.describe(),
            "pfn 0xa02f4 (Movable) L.M. [lru mlocked swapbacked dirty mmap uptodate] mapcount 2"
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: FolioState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    /// Live: this process's own pages. Flags need root; without it the reader says so.
    #[test]
    fn reads_own_pages() {
        let r = FolioReader::open().expect("pagemap opens");
        let v = vec![7u8; 3 * 4096];
        let addr = v.as_ptr() as u64 + 4096;
        let s = r.read(addr).unwrap();
        assert!(matches!(s.page.as_str(), "present" | "unreadable"), "{s:?}");
        if s.page == "present" && r.kpageflags.is_some() {
            let f = s.page_flags().unwrap();
            assert!(f.anon() && !f.mlocked(), "{}", s.describe());
        } else {
            assert!(r.note().is_some() || s.page == "unreadable");
        }
    }
}
