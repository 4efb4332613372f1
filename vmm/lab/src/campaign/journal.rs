// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The campaign journal: one JSON line per VM, appended, flushed and fsynced before the next
//! result is accepted, so a campaign killed at any moment (Ctrl-C, OOM, power) loses nothing
//! and `--resume` continues where it stopped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Failures of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {err}")]
    Open { path: PathBuf, err: io::Error },
    #[error("cannot append to the journal {path}: {err}")]
    Append { path: PathBuf, err: io::Error },
    #[error("journal {path} line {line} is not a run record ({err}); fix or remove that line")]
    Corrupt {
        path: PathBuf,
        line: usize,
        err: String,
    },
}

/// One VM's result, as the campaign keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// `cell#run`: unique within a campaign.
    pub key: String,
    pub cell: String,
    pub run: u64,
    pub policy: String,
    pub backing: String,
    pub fault_in: String,
    pub noise: u32,
    pub prefill: u8,
    /// completed | terminated | guest-failed | vmm-error | timeout | crashed
    pub outcome: String,
    pub exit_code: i32,
    /// The pin number a failure was injected at, if any.
    pub injected_at: Option<u64>,
    pub pins_attempted: u64,
    pub pins_ok: u64,
    pub pins_failed: u64,
    pub pins_retried: u64,
    pub faults: u64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    pub pin_p50_us: f64,
    pub pin_p99_us: f64,
    pub drains_local: u64,
    pub drains_all: u64,
    pub drain_ms: f64,
    pub vmstat_delta: BTreeMap<String, i64>,
    pub termination_errno: Option<String>,
    pub termination_gpa: Option<u64>,
    pub wall_ms: f64,
    pub kernel: String,
    /// Unix time the run ended.
    pub at: u64,
    /// What went wrong outside the guest (crashed child, unparsable report), if anything.
    pub note: Option<String>,
    /// Each failed pin, explained (signature and the facts behind it; docs/FAILURES.md).
    /// Journals written before this field have none.
    #[serde(default)]
    pub failures: Vec<FailureNote>,
    /// From each page's fault-in to its successful pin, µs: this VM's median and maximum (0: no pin the
    /// VMM faulted in first).
    #[serde(default)]
    pub fault_to_pin_p50_us: f64,
    #[serde(default)]
    pub fault_to_pin_max_us: f64,
    /// `--trace`: the kernel's own count of this VM's failed long-term-pin migrations and of
    /// its migration events (None without a trace).
    #[serde(default)]
    pub kernel_pin_failed: Option<u64>,
    #[serde(default)]
    pub kernel_pin_migrations: Option<u64>,
    /// The git commit of the pinvmm that ran this VM, from its report (older journals: None).
    #[serde(default)]
    pub git_commit: Option<String>,
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// normal | protected (older journals: normal). Decides which errno counts as the seed's
    /// failure ([`super::summary::counted_termination`]).
    #[serde(default = "normal_vm")]
    pub vm_type: String,
    /// The run's model (`pkvm-exact`, `stress:...`), from its report.
    #[serde(default)]
    pub model: Option<String>,
    /// The loader's last pages right after loading: how many were pending in an mlock batch
    /// on the LRU, and how many were off the LRU (root only; see vmm::loader::TailState).
    #[serde(default)]
    pub loader_tail_pending_on_lru: Option<u64>,
    #[serde(default)]
    pub loader_tail_off_lru: Option<u64>,
    /// Protected VMs: KVM_RUN calls that failed with EFAULT.
    #[serde(default)]
    pub protected_efaults: Option<u64>,
    /// Linux guests: launch to verified result line.
    #[serde(default)]
    pub result_line_ms: Option<f64>,
}

fn normal_vm() -> String {
    "normal".into()
}

/// One failed pin of a VM, as the campaign keeps it: the verdict and the facts it rests on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailureNote {
    /// `mlock-batch-pending`, `mlock-batch-after-lru-add`, ... (vmm::stage2::explain).
    pub signature: String,
    pub decided_by: String,
    /// `terminated` | `retried`.
    pub outcome: String,
    pub gpa: u64,
    pub pfn: Option<u64>,
    pub zone: Option<String>,
    /// `LAMU` letters before the pin (`--trace`) and right after the failure.
    pub flags_before: Option<String>,
    pub flags_after: Option<String>,
    pub fault_cpu: Option<u32>,
    pub pin_cpu: Option<u32>,
    pub fault_to_pin_us: Option<f64>,
    /// The kernel's failed migration of this page was in the trace (`--trace`).
    pub kernel_event: bool,
    /// How the failed page was found (`resolver`; for protected VMs `pin-view scan`, `trace`,
    /// `KVM (memory-fault exit)`, or `unknown: ...`).
    #[serde(default)]
    pub identified_by: String,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) `dir/runs.jsonl` for appending. A torn last line left by a crash is
    /// cut off first, so the next record starts on a line of its own.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join("runs.jsonl");
        let err = |err| JournalError::Open {
            path: path.clone(),
            err,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(err)?;
        let text = std::fs::read(&path).map_err(err)?;
        if !text.is_empty() && text.last() != Some(&b'\n') {
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(err)?;
        }
        Ok(Self { path, file })
    }

    /// Appends one record durably.
    pub fn append(&mut self, r: &RunRecord) -> Result<(), JournalError> {
        let err = |err| JournalError::Append {
            path: self.path.clone(),
            err,
        };
        let mut line = serde_json::to_string(r).map_err(|e| err(io::Error::other(e)))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Reads every record of `dir/runs.jsonl` (none if it does not exist). A torn last line (the
/// process died mid-write) is dropped; corruption anywhere else is an error.
pub fn load(dir: &Path) -> Result<Vec<RunRecord>, JournalError> {
    let path = dir.join("runs.jsonl");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(JournalError::Open { path, err }),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|err| JournalError::Open {
            path: path.clone(),
            err,
        })?;
    let mut out = Vec::with_capacity(lines.len());
    let last = lines.len().saturating_sub(1);
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(r) => out.push(r),
            Err(_) if i == last => {} // torn write at the end
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path,
                    line: i + 1,
                    err: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(cell: &str, run: u64, outcome: &str) -> RunRecord {
        RunRecord {
            key: format!("{cell}#{run}"),
            cell: cell.into(),
            run,
            policy: cell.split('/').nth(1).unwrap_or("none").into(),
            backing: cell.split('/').next().unwrap_or("shmem").into(),
            fault_in: "touch".into(),
            noise: 0,
            prefill: 0,
            outcome: outcome.into(),
            exit_code: 0,
            injected_at: None,
            pins_attempted: 10,
            pins_ok: 10,
            pins_failed: 0,
            pins_retried: 0,
            faults: 10,
            fault_p50_us: 20.0,
            fault_p99_us: 50.0,
            pin_p50_us: 1.0,
            pin_p99_us: 2.0,
            drains_local: 0,
            drains_all: 0,
            drain_ms: 0.0,
            vmstat_delta: BTreeMap::new(),
            termination_errno: (outcome == "terminated").then(|| "ENOMEM".into()),
            termination_gpa: None,
            wall_ms: 100.0,
            kernel: "test".into(),
            at: 0,
            note: None,
            failures: Vec::new(),
            fault_to_pin_p50_us: 0.0,
            fault_to_pin_max_us: 0.0,
            kernel_pin_failed: None,
            kernel_pin_migrations: None,
            git_commit: None,
            git_dirty: None,
            vm_type: "normal".into(),
            model: None,
            loader_tail_pending_on_lru: None,
            loader_tail_off_lru: None,
            protected_efaults: None,
            result_line_ms: None,
        }
    }

    #[test]
    fn appends_and_resumes_dropping_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("pinvmm-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("runs.jsonl"));
        let mut j = Journal::open(&dir).unwrap();
        j.append(&record("shmem/none", 0, "completed")).unwrap();
        j.append(&record("shmem/none", 1, "terminated")).unwrap();
        drop(j);
        // Simulate a crash mid-write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("runs.jsonl"))
            .unwrap();
        f.write_all(b"{\"key\":\"shmem/none#2\",\"ce").unwrap();
        let got = load(&dir).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].outcome, "terminated");
        // Reopening cuts the torn tail; the next record gets its own line.
        let mut j = Journal::open(&dir).unwrap();
        j.append(&record("shmem/none", 2, "completed")).unwrap();
        assert_eq!(load(&dir).unwrap().len(), 3);
        // Corruption in the middle is reported with its line number.
        std::fs::write(dir.join("runs.jsonl"), "garbage\n{}\n").unwrap();
        assert!(matches!(
            load(&dir),
            Err(JournalError::Corrupt { line: 1, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
