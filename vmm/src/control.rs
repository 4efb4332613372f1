// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How the VM's threads tell the main thread what happened, and how it tells them to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Instant;

use serde::Serialize;

use crate::vcpu::VcpuOutcome;

/// A VM ended by a failed long-term pin, as pKVM ends it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Termination {
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

/// Messages to the main thread.
#[derive(Debug)]
pub enum VmEvent {
    /// A vCPU thread finished.
    VcpuDone { id: u8, outcome: VcpuOutcome },
    /// The resolver could not pin a page: the VM must die.
    PinFailed(Termination),
    /// The resolver hit a host error it cannot recover from.
    ResolverFailed(String),
}

/// Shared between all of a VM's threads.
#[derive(Debug)]
pub struct VmControl {
    stop: AtomicBool,
    tx: Mutex<mpsc::Sender<VmEvent>>,
    /// When the first KVM_RUN of any vCPU returned (launch latency: the first guest exit).
    first_exit: OnceLock<Instant>,
}

impl VmControl {
    pub fn new() -> (Arc<Self>, mpsc::Receiver<VmEvent>) {
        let (tx, rx) = mpsc::channel();
        (
            Arc::new(Self {
                stop: AtomicBool::new(false),
                tx: Mutex::new(tx),
                first_exit: OnceLock::new(),
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

    /// Sends an event; a main thread that is gone is ignored (it is tearing down already).
    pub fn send(&self, ev: VmEvent) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(ev);
    }
}

/// Symbolic name of an errno, for reports.
pub fn errno_name(e: i32) -> String {
    let known = [
        (libc::ENOMEM, "ENOMEM"),
        (libc::EFAULT, "EFAULT"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EBUSY, "EBUSY"),
        (libc::EINVAL, "EINVAL"),
        (libc::EPERM, "EPERM"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EIO, "EIO"),
        (libc::EINTR, "EINTR"),
        (libc::EEXIST, "EEXIST"),
        (libc::EHWPOISON, "EHWPOISON"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == e)
        .map(|(_, s)| (*s).to_owned())
        .unwrap_or_else(|| format!("errno {e}"))
}
