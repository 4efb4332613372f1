// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How the VM's threads tell the main thread what happened, and how it tells them to stop.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Instant;

use serde::Serialize;

use crate::inject::Site;
use crate::sched::OwnThreads;
use crate::sys::errno_name;

/// How a vCPU's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VcpuOutcome {
    /// The guest wrote the test device's EXIT register.
    Exited { status: u32 },
    /// HLT (Linux guests; payloads do not use it).
    Halted,
    /// The guest crashed (triple fault, failed entry, internal error).
    Crashed { reason: String },
    /// Stopped by the VMM (pin failure elsewhere, timeout).
    Stopped,
    /// KVM_RUN failed (a VMM error; for a protected VM's failed pin the VM is terminated).
    RunFailed { errno: i32, errno_name: String },
    /// KVM_RUN returned an exit pinvmm does not handle (a VMM error).
    Unhandled { exit: String },
}

/// A VM ended by a failed long-term pin, as pKVM ends it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Termination {
    /// The injection site of the failed call (`pin-update`; `kvm-run` for protected VMs).
    pub site: String,
    /// The failed system call.
    pub call: String,
    pub errno: i32,
    pub errno_name: String,
    pub gpa: u64,
    pub hva: u64,
    pub page: u64,
    pub injected: bool,
    /// Pins that had succeeded before this one.
    pub pins_ok_before: u64,
    pub message: String,
}

/// A host call the VM needed failed (other than a long-term pin): the VM ends as a VMM error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostFailure {
    /// Where: an injection site (`uffd-continue`, `drain`, `kvm-run`, ...; see
    /// [`crate::inject::Site`]) or, for calls `--inject` cannot reach, a short name
    /// (`seccomp`, `fault-in`, `event-loop`, `resolver`).
    pub site: String,
    /// The failed system call.
    pub call: String,
    pub errno: Option<i32>,
    pub errno_name: Option<String>,
    /// The guest-physical address being resolved, when the call was about one.
    pub gpa: Option<u64>,
    /// The thread that failed: `fault-in`, `pin`, `vcpuN`, `main`.
    pub thread: String,
    /// Whether `--inject` made the call fail.
    pub injected: bool,
    pub message: String,
}

impl HostFailure {
    /// A failure at an injection site.
    pub fn at(
        site: Site,
        errno: Option<i32>,
        injected: bool,
        thread: &str,
        gpa: Option<u64>,
        message: String,
    ) -> Self {
        Self::named(site.name(), site.call(), errno, thread, message).with(gpa, injected)
    }

    /// A failure of a call `--inject` has no site for.
    pub fn named(
        site: &str,
        call: &str,
        errno: Option<i32>,
        thread: &str,
        message: String,
    ) -> Self {
        Self {
            site: site.into(),
            call: call.into(),
            errno,
            errno_name: errno.map(errno_name),
            gpa: None,
            thread: thread.into(),
            injected: false,
            message,
        }
    }

    /// One line: what failed where.
    pub fn describe(&self) -> String {
        let errno = self.errno_name.as_deref().unwrap_or("an error");
        let gpa = self
            .gpa
            .map(|g| format!(", GPA {g:#x}"))
            .unwrap_or_default();
        let injected = if self.injected { " [injected]" } else { "" };
        format!(
            "{} failed with {errno} in the {} thread (site {}{gpa}){injected}",
            self.call, self.thread, self.site
        )
    }

    fn with(mut self, gpa: Option<u64>, injected: bool) -> Self {
        (self.gpa, self.injected) = (gpa, injected);
        self
    }
}

/// Messages to the main thread.
#[derive(Debug)]
pub enum VmEvent {
    /// A vCPU thread finished.
    VcpuDone { id: u8, outcome: VcpuOutcome },
    /// The resolver could not pin a page: the VM must die.
    PinFailed(Termination),
    /// A VM thread hit a host error it cannot recover from.
    HostFailed(HostFailure),
}

/// Shared between all of a VM's threads.
#[derive(Debug)]
pub struct VmControl {
    stop: AtomicBool,
    tx: Mutex<mpsc::Sender<VmEvent>>,
    /// When the first KVM_RUN of any vCPU returned (launch latency: the first guest exit).
    first_exit: OnceLock<Instant>,
    /// The VM's threads (vCPUs, pin, fault-in), each registered as it starts.
    own_threads: Arc<OwnThreads>,
}

impl VmControl {
    pub fn new() -> (Arc<Self>, mpsc::Receiver<VmEvent>) {
        let (tx, rx) = mpsc::channel();
        (
            Arc::new(Self {
                stop: AtomicBool::new(false),
                tx: Mutex::new(tx),
                first_exit: OnceLock::new(),
                own_threads: Arc::default(),
            }),
            rx,
        )
    }

    /// Whether threads should wind down.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Records the first guest exit of the VM (called by each vCPU once; the earliest wins).
    pub fn note_first_exit(&self) {
        let _ = self.first_exit.set(Instant::now());
    }

    /// When the first guest exit happened, if one did.
    pub fn first_exit(&self) -> Option<Instant> {
        self.first_exit.get().copied()
    }

    /// The VM's own threads (see [`OwnThreads`]).
    pub fn own_threads(&self) -> &Arc<OwnThreads> {
        &self.own_threads
    }

    /// Sends an event; a main thread that is gone is ignored (it is tearing down already).
    pub fn send(&self, ev: VmEvent) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(ev);
    }
}

/// A host call at a site that failed, really or by injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub site: Site,
    pub errno: Option<i32>,
    pub injected: bool,
    /// The error as its library reported it (when it carries no errno, all there is).
    pub detail: String,
}

impl CallFailure {
    /// The failure an injection makes.
    pub fn injected(site: Site, errno: i32) -> Self {
        Self {
            site,
            errno: Some(errno),
            injected: true,
            detail: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// For the report: `what` says what the call was doing (e.g. "mapping guest page 7").
    pub fn into_host_failure(self, thread: &str, gpa: Option<u64>, what: &str) -> HostFailure {
        let message = format!("{what}: {self}");
        HostFailure::at(self.site, self.errno, self.injected, thread, gpa, message)
    }
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.site.call())?;
        if let Some(e) = self.errno {
            write!(f, " with {}", errno_name(e))?;
        }
        write!(f, " ({})", self.detail)?;
        if self.injected {
            f.write_str(" [injected]")?;
        }
        Ok(())
    }
}
