// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the scheduler did to a VM's threads, and how they ask it for short waits.
//!
//! - [`SchedProbe`]: a thread opens its own `/proc/thread-self/schedstat` and `status` when it
//!   starts (before its seccomp filter, which allows `read` but not `open`), and reads them
//!   when it ends: time on a CPU, time runnable but waiting for one, how often it was switched
//!   in, and its voluntary (it blocked) and involuntary (it was preempted) context switches.
//!   Under CPU contention that is where a hand-off's time goes (docs/PERFORMANCE.md).
//! - [`request_short_slice`]: asks the fair scheduler (EEVDF, Linux 6.12+) for a short time
//!   slice (`sched_attr.sched_runtime` of a `SCHED_OTHER` thread). It changes no share of CPU
//!   time; a waking thread with a shorter slice than the running one may preempt it at once
//!   instead of waiting for the end of its slice (up to a scheduler tick, 4 ms at HZ=250).

use std::fs::File;
use std::io::{self, Read};

use serde::Serialize;

/// One thread's scheduling over its life.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ThreadSched {
    /// The thread's role: `vcpu0`, `fault-in`, `pin`.
    pub thread: String,
    /// Time on a CPU, ns.
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU (a run queue), ns.
    pub runq_wait_ns: u64,
    /// Times it was switched in.
    pub slices: u64,
    /// Context switches because it blocked (slept, waited for a lock, an I/O, a fault).
    pub voluntary_switches: u64,
    /// Context switches because it was preempted while runnable.
    pub involuntary_switches: u64,
}

/// Open descriptors of the calling thread's scheduler statistics (see the module docs).
#[derive(Debug)]
pub struct SchedProbe {
    thread: String,
    schedstat: Option<File>,
    status: Option<File>,
}

impl SchedProbe {
    /// Opens the calling thread's files (missing ones make [`Self::read`] report less).
    pub fn open(thread: impl Into<String>) -> Self {
        Self {
            thread: thread.into(),
            schedstat: File::open("/proc/thread-self/schedstat").ok(),
            status: File::open("/proc/thread-self/status").ok(),
        }
    }

    /// Reads them; call it on the thread that opened them (each file is read once).
    pub fn read(mut self) -> Option<ThreadSched> {
        let mut s = ThreadSched {
            thread: std::mem::take(&mut self.thread),
            ..Default::default()
        };
        let schedstat = read_all(self.schedstat.as_mut()?).ok()?;
        let mut f = schedstat.split_whitespace().map(|x| x.parse::<u64>().ok());
        (s.run_ns, s.runq_wait_ns, s.slices) = (f.next()??, f.next()??, f.next()??);
        if let Some(status) = self.status.as_mut().and_then(|f| read_all(f).ok()) {
            s.voluntary_switches = field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
            s.involuntary_switches = field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
        Some(s)
    }
}

fn read_all(f: &mut File) -> io::Result<String> {
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

fn field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// The slice [`request_short_slice`] asks for: the shortest the kernel accepts (0.1 ms).
pub const SHORT_SLICE_NS: u64 = 100_000;

/// Asks for a `slice_ns` time slice for the calling thread, staying `SCHED_OTHER` at its nice
/// level (see the module docs). Kernels before 6.12 accept and ignore it.
pub fn request_short_slice(slice_ns: u64) -> io::Result<()> {
    /// `struct sched_attr` (include/uapi/linux/sched/types.h), version 1 (56 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    // The thread's nice level, kept (SCHED_FLAG_KEEP_PARAMS would keep the old slice too).
    // SAFETY: getpriority(2) takes two integers; for PRIO_PROCESS, 0 is the calling thread.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice_ns,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr(2) reads one sched_attr of the size it names, which `attr` is;
    // pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reads_its_own_schedstat() {
        let s = std::thread::spawn(|| {
            let p = SchedProbe::open("t");
            std::thread::sleep(std::time::Duration::from_millis(2));
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = x.wrapping_add(std::hint::black_box(i));
            }
            std::hint::black_box(x);
            p.read()
        })
        .join()
        .unwrap()
        .expect("/proc/thread-self/schedstat");
        assert_eq!(s.thread, "t");
        assert!(s.run_ns > 0 && s.slices >= 1, "{s:?}");
        assert!(s.voluntary_switches >= 1, "it slept: {s:?}");
    }

    #[test]
    fn a_short_slice_is_accepted() {
        // Older kernels ignore sched_runtime for SCHED_OTHER, newer ones take it.
        std::thread::spawn(|| request_short_slice(SHORT_SLICE_NS).unwrap())
            .join()
            .unwrap();
    }
}
