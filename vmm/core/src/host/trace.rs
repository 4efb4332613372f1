// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The kernel's own record of a VM's long-term pins (`--trace`): the `migrate:` trace events
//! (`mm_migrate_pages_start`, `set_migration_pte`, `mm_migrate_pages`) in a private tracefs
//! instance, filtered to the VM's own threads with `set_event_pid`, so the counts are the VM's
//! even while other processes migrate pages. One `mm_migrate_pages` event with
//! `reason=longterm_pin` is written per pin call that had to migrate something; its
//! `nr_failed` counts the folios that could not move, and the `set_migration_pte` events
//! before it name every address the folio was mapped at — which identifies the failing page
//! where nothing else does (a protected VM's failed pin, taken by KVM on the vCPU thread).
//!
//! Needs root and a mounted tracefs (`/sys/kernel/tracing`, or `/sys/kernel/debug/tracing`);
//! pinvmm does not mount it. The instance (`instances/pinvmm-PID-N`, a ring buffer of
//! [`BUFFER_KB`] per CPU) is removed when the session ends; instances left by a pinvmm that
//! died are removed by the next session.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Where tracefs may be mounted.
const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The events a session enables.
pub const EVENTS: &[&str] = &[
    "migrate/mm_migrate_pages_start",
    "migrate/set_migration_pte",
    "migrate/mm_migrate_pages",
];

/// Ring buffer per CPU, KiB: ~100 bytes of text per event, ~5 events per migrated page.
pub const BUFFER_KB: u32 = 4096;

/// The marker written at the start, to map trace timestamps onto the VM's clock.
const SYNC_MARKER: &str = "pinvmm-clock-sync";

/// Instances created by this process (several VMs per process in tests and benches).
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Failures of a trace session.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "no tracefs mounted (looked in {}): mount it with 'mount -t tracefs nodev /sys/kernel/tracing' (needs root)",
        TRACEFS.join(", ")
    )]
    NoTracefs,
    #[error("cannot create the tracefs instance {path}: {err} (needs root)")]
    Instance { path: PathBuf, err: io::Error },
    #[error("this kernel has no trace event {event} ({path} is missing): it was built without it")]
    NoEvent { event: &'static str, path: PathBuf },
    #[error("cannot write '{value}' to {path}: {err}")]
    Write {
        path: PathBuf,
        value: String,
        err: io::Error,
    },
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: io::Error },
}

/// A tracefs instance recording the `migrate:` events of a set of threads.
#[derive(Debug)]
pub struct TraceSession {
    dir: PathBuf,
    tids: Mutex<BTreeSet<i32>>,
    /// The VM's time zero, and the same moment on the trace clock once parsed.
    t0: Instant,
    sync_at: Instant,
    done: std::sync::atomic::AtomicBool,
}

fn write_file(path: &Path, value: &str) -> Result<(), TraceError> {
    let err = |err| TraceError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        err,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// The tracefs mount point, if one is mounted (an `instances` directory exists).
pub fn tracefs_root() -> Option<PathBuf> {
    TRACEFS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("instances").is_dir())
}

/// Removes `pinvmm-PID-N` instances whose process is gone (a pinvmm killed before it could
/// remove its own). Best effort.
fn remove_stale(instances: &Path) {
    let Ok(dir) = fs::read_dir(instances) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pinvmm-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

impl TraceSession {
    /// Creates the instance, filters it to `tid` (the calling thread: more with
    /// [`TraceSession::add_thread`]), switches it to the monotonic clock and enables
    /// [`EVENTS`]. `t0` is the VM's time zero for [`KernelTrace`]'s timestamps.
    pub fn start(t0: Instant, tid: i32) -> Result<Self, TraceError> {
        let root = tracefs_root().ok_or(TraceError::NoTracefs)?;
        let instances = root.join("instances");
        remove_stale(&instances);
        let name = format!(
            "pinvmm-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = instances.join(name);
        fs::create_dir(&dir).map_err(|err| TraceError::Instance {
            path: dir.clone(),
            err,
        })?;
        let mut s = Self {
            dir,
            tids: Mutex::new(BTreeSet::from([tid])),
            t0,
            sync_at: t0,
            done: std::sync::atomic::AtomicBool::new(false),
        };
        // From here on Drop removes the instance if a step fails.
        write_file(&s.dir.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        write_file(&s.dir.join("trace_clock"), "mono")?;
        write_file(&s.dir.join("set_event_pid"), &tid.to_string())?;
        for &e in EVENTS {
            let p = s.dir.join("events").join(e).join("enable");
            if !p.exists() {
                return Err(TraceError::NoEvent { event: e, path: p });
            }
            write_file(&p, "1")?;
        }
        write_file(&s.dir.join("tracing_on"), "1")?;
        s.sync_at = Instant::now();
        write_file(&s.dir.join("trace_marker"), SYNC_MARKER)?;
        Ok(s)
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the calling thread to the filter.
    pub fn add_current_thread(&self) -> Result<(), TraceError> {
        self.add_thread(crate::sched::current_tid())
    }

    /// Adds a thread (its tid, from `gettid()`) to the filter.
    pub fn add_thread(&self, tid: i32) -> Result<(), TraceError> {
        let mut tids = self.tids.lock().unwrap_or_else(|e| e.into_inner());
        if !tids.insert(tid) {
            return Ok(());
        }
        let list = tids
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        write_file(&self.dir.join("set_event_pid"), &list)
    }

    /// Stops recording, reads and parses the trace, removes the instance (a second call
    /// finds it gone: an error).
    pub fn finish(&self) -> Result<KernelTrace, TraceError> {
        let _ = write_file(&self.dir.join("tracing_on"), "0");
        let path = self.dir.join("trace");
        let text = fs::read_to_string(&path).map_err(|err| TraceError::Read { path, err })?;
        let lost = lost_events(&self.dir);
        let sync_us = self.sync_at.duration_since(self.t0).as_secs_f64() * 1e6;
        let mut t = parse(&text, sync_us);
        t.lost_events = lost;
        t.instance = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        t.tids = self
            .tids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        self.remove();
        Ok(t)
    }

    fn remove(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let _ = write_file(&self.dir.join("tracing_on"), "0");
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Events the ring buffer dropped (`overrun` over the per-CPU stats).
fn lost_events(dir: &Path) -> u64 {
    let Ok(cpus) = fs::read_dir(dir.join("per_cpu")) else {
        return 0;
    };
    cpus.flatten()
        .filter_map(|c| fs::read_to_string(c.path().join("stats")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("overrun:")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// One `mm_migrate_pages` event: one pin call's migration pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateEvent {
    /// The thread that pinned (the pin thread; for protected VMs, KVM on the vCPU thread).
    pub tid: i32,
    pub cpu: u32,
    /// µs since the VM started (trace clock mapped onto it; ±10 µs).
    pub at_us: f64,
    pub reason: String,
    pub mode: String,
    pub succeeded: u64,
    pub failed: u64,
    /// The virtual addresses the migrated folios were mapped at (`set_migration_pte`; one per
    /// mapping and pass, deduplicated, in order).
    pub addrs: Vec<u64>,
}

/// What the kernel recorded for the VM's threads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelTrace {
    pub instance: String,
    /// The threads the instance was filtered to.
    pub tids: Vec<i32>,
    /// `mm_migrate_pages` events with `reason=longterm_pin`.
    pub pin_migrations: u64,
    pub pin_migrated: u64,
    pub pin_failed: u64,
    /// `mm_migrate_pages` events with another reason (compaction, ...), by reason.
    pub other_reasons: BTreeMap<String, u64>,
    /// The `longterm_pin` events that failed, in full.
    pub failures: Vec<MigrateEvent>,
    /// Events the ring buffer dropped (0 means the counts are complete).
    pub lost_events: u64,
    /// Bytes of trace text read.
    pub bytes: u64,
}

impl KernelTrace {
    /// The failed migration whose folio was mapped at `addr` (a host address of the page).
    pub fn failure_at(&self, addr: u64) -> Option<&MigrateEvent> {
        let page = addr & !0xfff;
        self.failures.iter().find(|e| e.addrs.contains(&page))
    }
}

/// `key=value` out of an event line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    let v = &line[i + key.len()..];
    Some(v.split([' ', ',']).next().unwrap_or(v))
}

/// The common prefix of a trace line: `  comm-tid  [cpu] flags  ts: event: rest`.
fn prefix(line: &str) -> Option<(i32, u32, f64, &str, &str)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let tid = line[..open]
        .trim_end()
        .rsplit('-')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let cpu = line[open + 1..close].trim().parse().ok()?;
    let rest = &line[close + 1..];
    let colon = rest.find(": ")?;
    let ts = rest[..colon].split_whitespace().last()?.parse().ok()?;
    let after = &rest[colon + 2..];
    let (event, body) = after
        .split_once(": ")
        .unwrap_or((after.trim_end_matches(':'), ""));
    Some((tid, cpu, ts, event, body))
}

/// Parses an instance's `trace` text. `sync_us` is when (µs since the VM's time zero) the
/// clock-sync marker was written; events get `at_us` on that clock.
pub fn parse(text: &str, sync_us: f64) -> KernelTrace {
    let mut t = KernelTrace {
        bytes: text.len() as u64,
        ..Default::default()
    };
    let mut sync_ts = None;
    // Per thread: the addresses of the migration in progress.
    let mut open: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let mut failures = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((tid, cpu, ts, event, body)) = prefix(line) else {
            continue;
        };
        match event {
            "tracing_mark_write" if body.contains(SYNC_MARKER) => sync_ts = Some(ts),
            "mm_migrate_pages_start" => {
                open.insert(tid, Vec::new());
            }
            "set_migration_pte" => {
                if let Some(a) = field(body, "addr=").and_then(|a| u64::from_str_radix(a, 16).ok())
                {
                    let v = open.entry(tid).or_default();
                    if !v.contains(&a) {
                        v.push(a);
                    }
                }
            }
            "mm_migrate_pages" => {
                let num = |k| {
                    field(body, k)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let reason = field(body, "reason=").unwrap_or("?").to_owned();
                let (succeeded, failed) = (num("nr_succeeded="), num("nr_failed="));
                let addrs = open.remove(&tid).unwrap_or_default();
                if reason != "longterm_pin" {
                    *t.other_reasons.entry(reason).or_default() += 1;
                    continue;
                }
                t.pin_migrations += 1;
                t.pin_migrated += succeeded;
                t.pin_failed += failed;
                if failed > 0 {
                    failures.push((
                        ts,
                        MigrateEvent {
                            tid,
                            cpu,
                            at_us: 0.0,
                            reason,
                            mode: field(body, "mode=").unwrap_or("?").to_owned(),
                            succeeded,
                            failed,
                            addrs,
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    for (ts, mut e) in failures {
        e.at_us = match sync_ts {
            Some(s) => sync_us + (ts - s) * 1e6,
            None => f64::NAN,
        };
        t.failures.push(e);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed pin, traced on the arm64 board (6.12.43, fstate harness), with a clock marker.
    const FAILED_612: &str = "# tracer: nop
#
# entries-in-buffer/entries-written: 14/14   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
          pinvmm-161     [001] .....    11.000000: tracing_mark_write: pinvmm-clock-sync
          pinvmm-163     [001] .....    11.238960: mm_migrate_pages_start: mode=MIGRATE_SYNC reason=longterm_pin
          pinvmm-163     [001] .....    11.239034: set_migration_pte: addr=ffff7c297000, pte=30000a03dc780 order=0
          pinvmm-163     [001] .....    11.239061: set_migration_pte: addr=ffff7c257000, pte=30000a03dc780 order=0
          pinvmm-163     [001] .....    11.239093: remove_migration_pte: addr=ffff7c297000, pte=e80000a03dcf43 order=0
          pinvmm-163     [001] .....    11.239102: remove_migration_pte: addr=ffff7c257000, pte=e80000a03dcf43 order=0
          pinvmm-163     [001] .....    11.239135: set_migration_pte: addr=ffff7c297000, pte=30000a03dc780 order=0
          pinvmm-163     [001] .....    11.239143: set_migration_pte: addr=ffff7c257000, pte=30000a03dc780 order=0
          pinvmm-163     [001] .....    11.239184: mm_migrate_pages: nr_succeeded=0 nr_failed=1 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_SYNC reason=longterm_pin
          pinvmm-163     [001] .....    11.240000: mm_migrate_pages_start: mode=MIGRATE_SYNC reason=longterm_pin
          pinvmm-163     [001] .....    11.240100: set_migration_pte: addr=ffff7c258000, pte=30000a03dc780 order=0
          pinvmm-163     [001] .....    11.240184: mm_migrate_pages: nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_SYNC reason=longterm_pin
           <...>-73      [000] .l...     8.771215: mm_migrate_pages: nr_succeeded=3 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=compaction
";

    #[test]
    fn parses_a_failed_and_a_good_pin() {
        let t = parse(FAILED_612, 1000.0);
        assert_eq!((t.pin_migrations, t.pin_migrated, t.pin_failed), (2, 1, 1));
        assert_eq!(t.other_reasons.get("compaction"), Some(&1));
        assert_eq!(t.failures.len(), 1);
        let f = &t.failures[0];
        assert_eq!((f.tid, f.cpu, f.failed), (163, 1, 1));
        assert_eq!(f.mode, "MIGRATE_SYNC");
        assert_eq!(f.addrs, vec![0xffff7c297000, 0xffff7c257000]);
        assert!((f.at_us - (1000.0 + 239_184.0)).abs() < 0.5, "{}", f.at_us);
        assert_eq!(t.failure_at(0xffff7c257123).map(|e| e.tid), Some(163));
        assert!(t.failure_at(0xffff7c258000).is_none());
    }

    #[test]
    fn tolerates_garbage_and_missing_marker() {
        let t = parse("garbage\n  x-1 [zz] 1.0: mm_migrate_pages: \n\n", 0.0);
        assert_eq!(t.pin_migrations, 0);
        let only = FAILED_612
            .lines()
            .filter(|l| !l.contains("tracing_mark_write"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = parse(&only, 0.0);
        assert!(t.failures[0].at_us.is_nan());
    }

    #[test]
    fn prefix_handles_comm_with_dashes_and_unknown_comm() {
        let (tid, cpu, ts, ev, _) =
            prefix("   my-vcpu-thread-42   [003] d.... 5.5: mm_migrate_pages: x=1").unwrap();
        assert_eq!((tid, cpu, ts, ev), (42, 3, 5.5, "mm_migrate_pages"));
        let (tid, ..) =
            prefix("           <...>-73      [000] .l...     8.771215: foo: bar").unwrap();
        assert_eq!(tid, 73);
    }

    /// Live, where tracefs is mounted and we are root: a session starts, filters, and cleans up.
    #[test]
    fn session_starts_and_removes_its_instance() {
        let tid = crate::sched::current_tid();
        match TraceSession::start(Instant::now(), tid) {
            Ok(s) => {
                let dir = s.dir().to_owned();
                assert!(dir.is_dir());
                s.add_thread(tid).unwrap();
                let t = s.finish().unwrap();
                assert_eq!(t.pin_failed, 0);
                assert!(!dir.exists(), "instance left behind");
            }
            Err(e) => eprintln!("trace session skipped: {e}"),
        }
    }
}
