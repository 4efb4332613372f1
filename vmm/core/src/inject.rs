// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fault injection at the host calls a VM depends on (`pinvmm run --inject SITE[@NTH][:ERRNO]`).
//!
//! Each *site* is one host call the resolver path (or the vCPU loop) makes and can see fail:
//! reading the userfaultfd, its COPY/ZEROPAGE/CONTINUE/WAKE ioctls, registering the io_uring
//! pin table, the long-term pin itself (`IORING_REGISTER_BUFFERS_UPDATE`), `mlock2`, the drain
//! calls and `KVM_RUN`. An armed site makes its NTH call (1-based, counted per VM) fail with
//! ERRNO *instead of* making it; the code then handles that error exactly as it would handle
//! the real one, so what is tested is the real error path, and the report names the site, the
//! call, the errno and (where there is one) the guest-physical address.
//!
//! Cost when nothing is armed: one load and one bit test per call, against system calls of
//! microseconds (measured with `pinvmm bench`, see docs/RELIABILITY.md). No global state:
//! every VM has its own [`Injector`], so many VMs in one process (tests) do not interfere.
//!
//! Hand-written: the failpoint crates (`fail`, `fail-parser`) keep a global registry keyed by
//! string, which would make concurrent in-process VMs share their injections.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::sys::{errno_from_name, errno_name, errno_symbol};

/// The host calls that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Site {
    /// read(2) of the userfaultfd (every read, including empty non-blocking ones).
    UffdRead,
    /// UFFDIO_COPY: an anon page filled with staged contents or zeros.
    UffdCopy,
    /// UFFDIO_ZEROPAGE: an anon page mapped to the zero page (`--fault-in pin`).
    UffdZeropage,
    /// UFFDIO_CONTINUE: a pinned shmem page mapped into the guest view.
    UffdContinue,
    /// UFFDIO_WAKE: the faulting vCPU woken (anon; shmem only after a partial CONTINUE).
    UffdWake,
    /// io_uring_register of the sparse pin table (once per 16384 guest pages).
    PinRegister,
    /// IORING_REGISTER_BUFFERS_UPDATE: the long-term pin of a guest page.
    PinUpdate,
    /// mlock2(MLOCK_ONFAULT) of the pin view, at VM setup.
    Mlock,
    /// The policy's drain: madvise(MADV_COLD) (local) or migrate_pages (all CPUs).
    Drain,
    /// ioctl(KVM_RUN) of a vCPU.
    KvmRun,
}

impl Site {
    pub const ALL: [Site; 10] = [
        Site::UffdRead,
        Site::UffdCopy,
        Site::UffdZeropage,
        Site::UffdContinue,
        Site::UffdWake,
        Site::PinRegister,
        Site::PinUpdate,
        Site::Mlock,
        Site::Drain,
        Site::KvmRun,
    ];

    /// The name used by `--inject` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Site::UffdRead => "uffd-read",
            Site::UffdCopy => "uffd-copy",
            Site::UffdZeropage => "uffd-zeropage",
            Site::UffdContinue => "uffd-continue",
            Site::UffdWake => "uffd-wake",
            Site::PinRegister => "pin-register",
            Site::PinUpdate => "pin-update",
            Site::Mlock => "mlock",
            Site::Drain => "drain",
            Site::KvmRun => "kvm-run",
        }
    }

    /// The system call behind the site, as reports name it.
    pub fn call(self) -> &'static str {
        match self {
            Site::UffdRead => "read(userfaultfd)",
            Site::UffdCopy => "ioctl(UFFDIO_COPY)",
            Site::UffdZeropage => "ioctl(UFFDIO_ZEROPAGE)",
            Site::UffdContinue => "ioctl(UFFDIO_CONTINUE)",
            Site::UffdWake => "ioctl(UFFDIO_WAKE)",
            Site::PinRegister => "io_uring_register(IORING_REGISTER_BUFFERS2, sparse table)",
            Site::PinUpdate => "io_uring_register(IORING_REGISTER_BUFFERS_UPDATE)",
            Site::Mlock => "mlock2(MLOCK_ONFAULT)",
            Site::Drain => "madvise(MADV_COLD) / migrate_pages",
            Site::KvmRun => "ioctl(KVM_RUN)",
        }
    }

    /// The errno an injection uses when none is given: one the real call can return.
    pub fn default_errno(self) -> i32 {
        match self {
            Site::UffdRead => libc::EIO,
            Site::UffdCopy | Site::UffdZeropage | Site::UffdContinue | Site::UffdWake => {
                libc::EFAULT
            }
            Site::PinRegister | Site::PinUpdate => libc::ENOMEM,
            Site::Mlock => libc::EAGAIN,
            Site::Drain => libc::EINVAL,
            Site::KvmRun => libc::EFAULT,
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }

    fn from_name(s: &str) -> Option<Site> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--inject SITE[@NTH][:ERRNO]`: the NTH call at SITE fails with ERRNO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectSpec {
    pub site: Site,
    /// 1-based index of the call that fails (counted per VM, per site).
    pub nth: u64,
    pub errno: i32,
}

impl InjectSpec {
    pub fn new(site: Site, nth: u64, errno: i32) -> Self {
        Self { site, nth, errno }
    }

    /// `--inject-pin-failure N[:ERRNO]`, the older spelling of `--inject pin-update@N[:ERRNO]`.
    pub fn parse_pin_failure(s: &str) -> Result<Self, String> {
        let (n, e) = s.split_once(':').unwrap_or((s, "ENOMEM"));
        let nth = parse_nth(n)?;
        let errno = parse_errno(e)?;
        Ok(Self::new(Site::PinUpdate, nth, errno))
    }
}

fn parse_nth(n: &str) -> Result<u64, String> {
    n.parse()
        .ok()
        .filter(|&v: &u64| v > 0)
        .ok_or_else(|| format!("'{n}' is not a call number (1, 2, ...)"))
}

fn parse_errno(e: &str) -> Result<i32, String> {
    errno_from_name(e).ok_or_else(|| {
        format!("'{e}' is not an errno (use a name like ENOMEM, EFAULT, EIO or a number 1-4095)")
    })
}

impl FromStr for InjectSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, errno) = match s.split_once(':') {
            Some((r, e)) => (r, Some(parse_errno(e)?)),
            None => (s, None),
        };
        let (name, nth) = match rest.split_once('@') {
            Some((n, k)) => (n, parse_nth(k)?),
            None => (rest, 1),
        };
        let site = Site::from_name(name).ok_or_else(|| {
            let names: Vec<_> = Site::ALL.iter().map(|s| s.name()).collect();
            format!(
                "'{name}' is not an injection site (choose from: {})",
                names.join(", ")
            )
        })?;
        Ok(Self::new(site, nth, errno.unwrap_or(site.default_errno())))
    }
}

impl fmt::Display for InjectSpec {
    /// `SITE@NTH:ERRNO`, the errno by name or, without one, by number (so it parses back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:", self.site, self.nth)?;
        match errno_symbol(self.errno) {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.errno),
        }
    }
}

impl Serialize for InjectSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What became of one `--inject`, for the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InjectionReport {
    /// The injection, as `SITE@NTH:ERRNO`.
    pub spec: InjectSpec,
    pub site: Site,
    pub call: &'static str,
    pub errno: i32,
    pub errno_name: String,
    /// Whether the NTH call happened (and failed).
    pub fired: bool,
    /// Calls the VM made at this site.
    pub site_calls: u64,
}

/// One VM's armed injections and per-site call counters, shared by its threads.
#[derive(Debug)]
pub struct Injector {
    /// One bit per armed site: the only thing a call at an unarmed site reads.
    armed: u32,
    specs: Vec<(InjectSpec, AtomicBool)>,
    calls: [AtomicU64; Site::ALL.len()],
}

impl Injector {
    pub fn new(specs: &[InjectSpec]) -> Arc<Self> {
        Arc::new(Self {
            armed: specs.iter().fold(0, |a, s| a | s.site.bit()),
            specs: specs.iter().map(|s| (*s, AtomicBool::new(false))).collect(),
            calls: Default::default(),
        })
    }

    /// An injector with nothing armed.
    pub fn off() -> Arc<Self> {
        Self::new(&[])
    }

    /// Whether anything is armed at `site`.
    #[inline]
    pub fn is_armed(&self, site: Site) -> bool {
        self.armed & site.bit() != 0
    }

    /// Called just before the host call at `site`: `Some(errno)` if this call must fail
    /// instead of being made.
    #[inline]
    pub fn hit(&self, site: Site) -> Option<i32> {
        if self.is_armed(site) {
            self.hit_armed(site)
        } else {
            None
        }
    }

    #[cold]
    #[inline(never)]
    fn hit_armed(&self, site: Site) -> Option<i32> {
        let n = self.calls[site as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let (spec, fired) = self
            .specs
            .iter()
            .find(|(s, _)| s.site == site && s.nth == n)?;
        fired.store(true, Ordering::Relaxed);
        Some(spec.errno)
    }

    /// Every armed injection and whether it fired.
    pub fn report(&self) -> Vec<InjectionReport> {
        self.specs
            .iter()
            .map(|(s, fired)| InjectionReport {
                spec: *s,
                site: s.site,
                call: s.site.call(),
                errno: s.errno,
                errno_name: errno_name(s.errno),
                fired: fired.load(Ordering::Relaxed),
                site_calls: self.calls[s.site as usize].load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_round_trip() {
        let s: InjectSpec = "uffd-continue".parse().unwrap();
        assert_eq!(s, InjectSpec::new(Site::UffdContinue, 1, libc::EFAULT));
        let s: InjectSpec = "pin-update@7:EBUSY".parse().unwrap();
        assert_eq!(s, InjectSpec::new(Site::PinUpdate, 7, libc::EBUSY));
        assert_eq!(s.to_string(), "pin-update@7:EBUSY");
        assert_eq!(s.to_string().parse::<InjectSpec>(), Ok(s));
        let s: InjectSpec = "kvm-run:5".parse().unwrap();
        assert_eq!((s.nth, s.errno), (1, 5));
        // An errno without a name prints as its number (fuzz finding: "errno 4095").
        let s: InjectSpec = "pin-update@18446744073709551615:4095".parse().unwrap();
        assert_eq!(s.to_string(), "pin-update@18446744073709551615:4095");
        assert_eq!(s.to_string().parse::<InjectSpec>(), Ok(s));
        for site in Site::ALL {
            let s: InjectSpec = site.name().parse().unwrap();
            assert_eq!(s.to_string().parse::<InjectSpec>(), Ok(s));
        }
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        let e = "uffd-everything".parse::<InjectSpec>().unwrap_err();
        assert!(
            e.contains("uffd-everything") && e.contains("kvm-run"),
            "{e}"
        );
        let e = "drain@0".parse::<InjectSpec>().unwrap_err();
        assert!(e.contains("'0'"), "{e}");
        let e = "drain@x".parse::<InjectSpec>().unwrap_err();
        assert!(e.contains("'x'"), "{e}");
        let e = "drain:EWHAT".parse::<InjectSpec>().unwrap_err();
        assert!(e.contains("EWHAT"), "{e}");
        assert!("drain:0".parse::<InjectSpec>().is_err());
        assert!("drain:4096".parse::<InjectSpec>().is_err());
    }

    #[test]
    fn pin_failure_alias_is_pin_update() {
        assert_eq!(
            InjectSpec::parse_pin_failure("3"),
            Ok(InjectSpec::new(Site::PinUpdate, 3, libc::ENOMEM))
        );
        assert_eq!(
            InjectSpec::parse_pin_failure("5:EFAULT"),
            Ok(InjectSpec::new(Site::PinUpdate, 5, libc::EFAULT))
        );
        assert!(InjectSpec::parse_pin_failure("0").is_err());
        assert!(InjectSpec::parse_pin_failure("2:EWHAT").is_err());
    }

    #[test]
    fn fires_exactly_at_the_nth_call_of_its_site() {
        let inj = Injector::new(&[
            InjectSpec::new(Site::Drain, 2, libc::EIO),
            InjectSpec::new(Site::Drain, 4, libc::EBUSY),
            InjectSpec::new(Site::KvmRun, 1, libc::EFAULT),
        ]);
        assert_eq!(inj.hit(Site::PinUpdate), None);
        let drains: Vec<_> = (0..5).map(|_| inj.hit(Site::Drain)).collect();
        assert_eq!(
            drains,
            [None, Some(libc::EIO), None, Some(libc::EBUSY), None]
        );
        let r = inj.report();
        assert!(r[0].fired && r[1].fired && !r[2].fired);
        assert_eq!((r[0].site_calls, r[2].site_calls), (5, 0));
        assert_eq!(r[1].errno_name, "EBUSY");
        let off = Injector::off();
        assert!(Site::ALL.iter().all(|&s| off.hit(s).is_none()));
        assert!(off.report().is_empty());
    }
}
