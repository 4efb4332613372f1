// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The host's 2 MiB pages: the hugetlb pool (`/proc/sys/vm/nr_hugepages`) and the shmem THP
//! setting (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`), which the `hugetlb` and
//! `shmem-thp` backings need.
//!
//! `pinvmm run` only reads them and says what to change. Tests and `pinvmm bench`, when run
//! as root, change them with a [`HostSetting`] guard that puts the old value back when dropped.

use std::io;
use std::path::{Path, PathBuf};

/// The huge page size of both backings.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// The sysctl that sizes the default-size hugetlb pool (2 MiB on x86_64).
pub const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

const POOL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// Failures reading or changing the huge page settings.
#[derive(Debug, thiserror::Error)]
pub enum HugePagesError {
    #[error(
        "cannot read {path}: {err} (is this kernel built with CONFIG_HUGETLBFS / CONFIG_TRANSPARENT_HUGEPAGE?)"
    )]
    Read { path: PathBuf, err: io::Error },
    #[error("cannot write '{value}' to {path}: {err} (needs root)")]
    Write {
        path: PathBuf,
        value: String,
        err: io::Error,
    },
    #[error(
        "asked the kernel for {wanted} 2 MiB hugetlb pages in {NR_HUGEPAGES}, it found only {got} (memory too fragmented: free some memory or reserve at boot with hugepages=N)"
    )]
    Short { wanted: u64, got: u64 },
}

fn read(path: &Path) -> Result<String, HugePagesError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|err| HugePagesError::Read {
            path: path.into(),
            err,
        })
}

fn read_u64(path: &Path) -> Result<u64, HugePagesError> {
    let s = read(path)?;
    s.parse().map_err(|_| HugePagesError::Read {
        path: path.into(),
        err: io::Error::other(format!("'{s}' is not a number")),
    })
}

fn write(path: &Path, value: &str) -> Result<(), HugePagesError> {
    std::fs::write(path, value).map_err(|err| HugePagesError::Write {
        path: path.into(),
        value: value.into(),
        err,
    })
}

/// The 2 MiB hugetlb pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct HugetlbPool {
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use by anyone.
    pub free: u64,
    /// Free pages already promised to a mapping (a hugetlb mmap reserves its pages).
    pub reserved: u64,
}

impl HugetlbPool {
    /// Reads the pool, or None on a kernel without 2 MiB hugetlb pages.
    pub fn probe() -> Option<Self> {
        let p = Path::new(POOL_2M);
        Some(Self {
            total: read_u64(&p.join("nr_hugepages")).ok()?,
            free: read_u64(&p.join("free_hugepages")).ok()?,
            reserved: read_u64(&p.join("resv_hugepages")).ok()?,
        })
    }

    /// Pages a new mapping can still get.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    /// The `nr_hugepages` value that makes `needed` pages available (what to tell the user).
    pub fn total_for(&self, needed: u64) -> u64 {
        self.total + needed.saturating_sub(self.available())
    }
}

/// The effective shmem THP mode for 2 MiB folios: the per-size setting, or the global one
/// when that is `inherit` (`always`, `within_size`, `advise`, `never`, `deny`, `force`).
pub fn shmem_thp_mode() -> Result<String, HugePagesError> {
    let per_size = Path::new(THP).join("hugepages-2048kB/shmem_enabled");
    let mode = match read(&per_size) {
        Ok(s) => selected(&s),
        // Kernels before multi-size THP (6.8) have only the global setting.
        Err(_) => "inherit".to_owned(),
    };
    if mode != "inherit" {
        return Ok(mode);
    }
    read(&Path::new(THP).join("shmem_enabled")).map(|s| selected(&s))
}

/// Whether `madvise(MADV_HUGEPAGE)` on a memfd mapping can get 2 MiB folios in `mode`.
pub fn shmem_thp_mode_allows_madvise(mode: &str) -> bool {
    matches!(mode, "always" | "within_size" | "advise" | "force")
}

/// The bracketed word of a sysfs choice list ("always [advise] never" -> "advise").
fn selected(s: &str) -> String {
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .unwrap_or(s)
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned()
}

/// A host setting changed for a test or bench; the old value is written back on drop.
#[derive(Debug)]
pub struct HostSetting {
    path: PathBuf,
    old: String,
    new: String,
    /// For the pool: pages added, given back by lowering the pool by as much (not by writing
    /// the old value, which would also undo a change someone else made meanwhile).
    added_pages: Option<u64>,
}

impl HostSetting {
    /// Makes at least `pages` 2 MiB hugetlb pages available, growing the pool if needed.
    /// Returns None when enough were available already (nothing to restore).
    pub fn reserve_hugetlb(pages: u64) -> Result<Option<Self>, HugePagesError> {
        let pool = HugetlbPool::probe().ok_or_else(|| HugePagesError::Read {
            path: POOL_2M.into(),
            err: io::ErrorKind::NotFound.into(),
        })?;
        if pool.available() >= pages {
            return Ok(None);
        }
        let wanted = pool.total_for(pages);
        let path = Path::new(POOL_2M).join("nr_hugepages");
        write(&path, &wanted.to_string())?;
        let got = match read_u64(&path) {
            Ok(g) => g,
            Err(e) => {
                let _ = write(&path, &pool.total.to_string());
                return Err(e);
            }
        };
        let guard = Self {
            path,
            old: pool.total.to_string(),
            new: got.to_string(),
            added_pages: Some(got.saturating_sub(pool.total)),
        };
        if got < wanted {
            return Err(HugePagesError::Short { wanted, got }); // `guard` gives them back
        }
        Ok(Some(guard))
    }

    /// Sets the shmem THP mode to `advise` when the current mode ignores MADV_HUGEPAGE.
    /// Returns None when it already allows it.
    pub fn allow_shmem_thp() -> Result<Option<Self>, HugePagesError> {
        let mode = shmem_thp_mode()?;
        if shmem_thp_mode_allows_madvise(&mode) {
            return Ok(None);
        }
        // The per-size file may say `never` itself; else the global one decides.
        let per_size = Path::new(THP).join("hugepages-2048kB/shmem_enabled");
        let path = match read(&per_size) {
            Ok(s) if selected(&s) != "inherit" => per_size,
            _ => Path::new(THP).join("shmem_enabled"),
        };
        let old = selected(&read(&path)?);
        write(&path, "advise")?;
        Ok(Some(Self {
            path,
            old,
            new: "advise".into(),
            added_pages: None,
        }))
    }

    /// The command that undoes the change by hand (for an interrupted run).
    pub fn undo_hint(&self) -> String {
        format!("echo {} > {}", self.old, self.path.display())
    }
}

impl std::fmt::Display for HostSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "set {} {} -> {}",
            self.path.display(),
            self.old,
            self.new
        )
    }
}

impl Drop for HostSetting {
    fn drop(&mut self) {
        let value = match self.added_pages {
            Some(added) => match read_u64(&self.path) {
                Ok(now) => now.saturating_sub(added).to_string(),
                Err(_) => self.old.clone(),
            },
            None => self.old.clone(),
        };
        if let Err(e) = write(&self.path, &value) {
            eprintln!("pinvmm: could not restore a host setting: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_lists_parse() {
        assert_eq!(
            selected("always within_size advise [never] deny force"),
            "never"
        );
        assert_eq!(
            selected("always [inherit] within_size advise never"),
            "inherit"
        );
        assert_eq!(selected("advise"), "advise");
        assert!(shmem_thp_mode_allows_madvise("advise"));
        assert!(!shmem_thp_mode_allows_madvise("never"));
        assert!(!shmem_thp_mode_allows_madvise("deny"));
    }

    #[test]
    fn the_pool_says_what_to_set() {
        let p = HugetlbPool {
            total: 10,
            free: 6,
            reserved: 2,
        };
        assert_eq!(p.available(), 4);
        assert_eq!(p.total_for(4), 10);
        assert_eq!(p.total_for(16), 22);
    }

    #[test]
    fn this_host_reports_its_shmem_thp_mode() {
        // Every Debian kernel has THP; the small ci/kernels/ board kernels do not.
        if !Path::new(THP).exists() {
            return crate::testing::skip(
                "this_host_reports_its_shmem_thp_mode",
                crate::testing::Need::Thp,
                format!("no {THP}: this kernel has no transparent huge pages"),
            );
        }
        let m = shmem_thp_mode().unwrap();
        assert!(!m.is_empty() && m != "inherit", "{m}");
    }
}
