// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the scheduler did to a VM's threads, and how they ask it for short waits.
//!
//! - [`SchedProbe`]: a thread opens its own `/proc/thread-self/schedstat` and `status` when it
//!   starts (before its seccomp filter, which allows `read` but not `open`), and reads them
//!   when it ends: time on a CPU, time runnable but waiting for one, how often it was switched
//!   in, and its voluntary (it blocked) and involuntary (it was preempted) context switches.
//!   Under CPU contention that is where a hand-off's time goes (docs/PERFORMANCE.md).
//! - [`OwnThreads`]: a VM's threads (vCPUs, pin, fault-in) each register an open descriptor of
//!   their own `/proc/thread-self/stat` when they start (before their filter); the resolver's
//!   pollers read them to tell the VM's own runnable threads from other tasks (see
//!   `stage2::handoff`).
//! - [`request_short_slice`]: asks the fair scheduler (EEVDF, Linux 6.12+) for a short time
//!   slice (`sched_attr.sched_runtime` of a `SCHED_OTHER` thread). It changes no share of CPU
//!   time; a waking thread with a shorter slice than the running one may preempt it at once
//!   instead of waiting for the end of its slice (up to a scheduler tick, 4 ms at HZ=250).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::RwLock;

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

/// One registered thread of a VM.
#[derive(Debug)]
struct OwnThread {
    tid: i32,
    /// The CPU it is placed on (None: any CPU).
    cpu: Option<usize>,
    /// Its `/proc/thread-self/stat`, opened by the thread itself.
    stat: File,
}

/// A VM's own threads, as seen by the scheduler: which of them are runnable now.
///
/// Each thread registers itself ([`Self::register_current`]) before its seccomp filter (which
/// allows `pread64` but not `open`). Reading a registered thread's state is one `pread64` of its
/// stat file; a thread that has ended reads as not runnable.
#[derive(Debug, Default)]
pub struct OwnThreads {
    threads: RwLock<Vec<OwnThread>>,
}

/// What [`OwnThreads::look`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnLook {
    /// Registered threads.
    pub registered: usize,
    /// Registered threads runnable (state R), the caller included when it is registered.
    pub running: usize,
    /// Runnable registered threads other than the caller that may run on the caller's CPU
    /// (either of them not placed, or both placed on the same CPU).
    pub rivals: usize,
}

impl OwnThreads {
    /// Registers the calling thread, placed on `cpu` (None: not placed). Without
    /// `/proc/thread-self/stat` nothing is registered (the thread then counts as another task).
    pub fn register_current(&self, cpu: Option<usize>) {
        let Ok(stat) = File::open("/proc/thread-self/stat") else {
            return;
        };
        let tid = current_tid();
        let mut t = self.threads.write().unwrap_or_else(|p| p.into_inner());
        t.push(OwnThread { tid, cpu, stat });
    }

    /// Forgets every registered thread and closes its stat file (the VM's threads have ended).
    pub fn forget_all(&self) {
        self.threads
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How many threads are registered (no system call).
    pub fn registered(&self) -> usize {
        self.threads.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Reads the state of every registered thread but `me` (the caller's tid, counted as
    /// runnable without a read: it is running).
    pub fn look(&self, me: i32) -> OwnLook {
        let t = self.threads.read().unwrap_or_else(|p| p.into_inner());
        let mine = t.iter().find(|x| x.tid == me);
        let mut l = OwnLook {
            registered: t.len(),
            running: usize::from(mine.is_some()),
            rivals: 0,
        };
        let my_cpu = mine.and_then(|x| x.cpu);
        for x in t.iter().filter(|x| x.tid != me) {
            let mut buf = [0u8; 64];
            let runnable = x
                .stat
                .read_at(&mut buf, 0)
                .ok()
                .and_then(|n| stat_state(&buf[..n]))
                == Some(b'R');
            if runnable {
                l.running += 1;
                if may_share_cpu(my_cpu, x.cpu) {
                    l.rivals += 1;
                }
            }
        }
        l
    }
}

/// Whether two threads placed on `a` and `b` (None: not placed) may want the same CPU.
fn may_share_cpu(a: Option<usize>, b: Option<usize>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The calling thread's id.
pub fn current_tid() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The state letter of a `/proc/<pid>/stat` line (`R` running or runnable, `S` sleeping, ...):
/// the first field after the command name, which is in parentheses and may itself hold
/// spaces and parentheses, hence the last `)`. The line may be cut after the state.
pub fn stat_state(line: &[u8]) -> Option<u8> {
    let close = line.iter().rposition(|&b| b == b')')?;
    match line.get(close + 1..)? {
        [b' ', state, ..] if state.is_ascii_alphabetic() => Some(*state),
        _ => None,
    }
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
    fn current_tid_is_this_threads() {
        let main = current_tid();
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(main, other);
        assert!(main > 0 && other > 0);
    }

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(stat_state(b"42 (pinvmm-fault) R 1 2 3"), Some(b'R'));
        assert_eq!(stat_state(b"42 (a b) S 1 2"), Some(b'S'));
        // A command name with spaces and ')' in it (one can set any name with prctl).
        assert_eq!(stat_state(b"42 (x) R (y) ) D 1 2 3 4"), Some(b'D'));
        assert_eq!(stat_state(b"42 ()) R 0"), Some(b'R'));
        // Cut just after the state: still read; cut before it, or garbage: nothing.
        assert_eq!(stat_state(b"42 (vcpu0) R"), Some(b'R'));
        assert_eq!(stat_state(b"42 (vcpu0)"), None);
        assert_eq!(stat_state(b"42 (vcpu0) "), None);
        assert_eq!(stat_state(b"42 vcpu0 R"), None);
        assert_eq!(stat_state(b""), None);
    }

    #[test]
    fn registered_threads_are_read_by_state() {
        let own = std::sync::Arc::new(OwnThreads::default());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let o = own.clone();
        // A thread that sleeps on a channel, placed (as far as the registry knows) on CPU 0.
        let sleeper = std::thread::spawn(move || {
            o.register_current(Some(0));
            let _ = rx.recv();
        });
        while own.registered() < 1 {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        own.register_current(Some(1));
        let me = current_tid();
        assert_eq!(
            own.look(me),
            OwnLook {
                registered: 2,
                running: 1,
                rivals: 0
            }
        );
        // Asked for someone else: this thread's own entry is read too, and reads running
        // (and, the asker's CPU unknown, may share its CPU).
        assert_eq!(
            own.look(-1),
            OwnLook {
                registered: 2,
                running: 1,
                rivals: 1
            }
        );
        // A thread that spins is runnable (on a CPU or waiting for one); not placed, it may
        // take the caller's CPU.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o, s) = (own.clone(), stop.clone());
        let spinner = std::thread::spawn(move || {
            o.register_current(None);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        while own.registered() < 3 {
            std::thread::yield_now();
        }
        let l = own.look(me);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        assert_eq!((l.registered, l.running, l.rivals), (3, 2, 1), "{l:?}");
        drop(tx);
        sleeper.join().unwrap();
        // Ended threads read as not runnable (once they are gone: join returns while the
        // kernel may still be running the thread's exit).
        let t = std::time::Instant::now();
        while own.look(me).running != 1 && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(own.look(me).running, 1);
    }

    #[test]
    fn threads_share_a_cpu_unless_placed_apart() {
        assert!(may_share_cpu(None, None));
        assert!(may_share_cpu(Some(0), None));
        assert!(may_share_cpu(None, Some(1)));
        assert!(may_share_cpu(Some(1), Some(1)));
        assert!(!may_share_cpu(Some(0), Some(1)));
    }

    #[test]
    fn a_short_slice_is_accepted() {
        // Older kernels ignore sched_runtime for SCHED_OTHER, newer ones take it.
        std::thread::spawn(|| request_short_slice(SHORT_SLICE_NS).unwrap())
            .join()
            .unwrap();
    }
}
