// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Stage-2 fault resolution, one strategy per file over shared parts:
//! - [`resolver`]: the userfaultfd resolver (fault-in thread, pin thread, [`handoff`] ring
//!   between them), for `--stage2 pin` and `uffd`;
//! - [`eager`]: every page pinned before boot (`--stage2 eager`);
//! - [`protected`]: pKVM protected VMs, whose faults KVM resolves by pins itself;
//! - shared by them: [`pin`] (long-term pins through io_uring), [`drain`] (the drain
//!   policies), [`uffd`] (userfaultfd), [`path`] (each page's fault-in → pin path) and
//!   [`explain`] (why a pin failed: the verdict from the folio's flags and the path).
//!
//! `--stage2 kernel` leaves every fault to KVM: nothing here.

use crate::names::named_enum;

pub mod drain;
pub mod eager;
pub mod efault;
pub mod explain;
mod handoff;
pub mod path;
pub mod pin;
pub mod protected;
pub mod resolver;
pub mod uffd;

pub use eager::{EagerError, pin_all_eagerly};
pub use resolver::{
    DEFAULT_SPIN, ExplainParts, Resolver, ResolverConfig, ResolverError, ResolverReport, arm,
};

named_enum! {
    /// Who faults a page into the mlocked pin view before the long-term pin.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FaultIn {
        /// The long-term pin faults the page in itself, on the CPU the vCPU runs on; the pages
        /// the VMM wrote were written through the mlocked view by its loader thread (pKVM-exact,
        /// the default).
        Pin = "pin",
        /// Stress model: the fault-in thread first faults every guest page into the mlocked
        /// view on the fault CPU by reading it (read fault-around maps and mlocks up to 16
        /// cached neighbours at once: docs/DESIGN.md), then the drain policy, then the pin on
        /// the pin CPU. Images and `--prefill` go through the page cache (the not-mlocked
        /// loader view) first.
        Touch = "touch",
    }
}

impl FaultIn {
    /// Whether the fault-in thread touches the page before the pin (a stress model).
    pub fn is_touch(self) -> bool {
        self != FaultIn::Pin
    }
}

named_enum! {
    /// How the guest's stage-2 faults are resolved.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Stage2 {
        /// userfaultfd + long-term pin per faulting page (the subject of pinvmm).
        Pin = "pin",
        /// userfaultfd without pins: the cost of the round trip alone.
        Uffd = "uffd",
        /// KVM's own fault path: no userfaultfd, no pins (the performance floor).
        Kernel = "kernel",
        /// Every guest page faulted in and pinned before the first instruction.
        Eager = "eager",
    }
}
