// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Turning a journal into per-cell rates with intervals, comparisons between policies, a table,
//! and KTAP.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::journal::RunRecord;
use super::stats::{Z95, fisher_exact, newcombe_diff, wilson, zero_upper_bound};
use vmm::stats::median;

/// One cell's numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellSummary {
    pub cell: String,
    pub policy: String,
    pub backing: String,
    pub fault_in: String,
    /// The model the runs came from (`pkvm-exact`, `stress:...`; "mixed" if they differ;
    /// empty for journals older than the field).
    #[serde(default)]
    pub model: String,
    pub runs: u64,
    pub completed: u64,
    pub terminated: u64,
    /// Terminations caused by `--inject-pin-failure-rate` (the known truth).
    pub terminated_injected: u64,
    pub runs_injected: u64,
    pub guest_failed: u64,
    pub vmm_error: u64,
    pub timeout: u64,
    pub crashed: u64,
    /// terminated / runs, with its Wilson 95% interval.
    pub rate: f64,
    pub rate_lo: f64,
    pub rate_hi: f64,
    pub pins_attempted: u64,
    pub pins_failed: u64,
    pub pins_retried: u64,
    /// Medians over runs of each run's percentile.
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    pub pin_p50_us: f64,
    pub pin_p99_us: f64,
    pub drains_local: u64,
    pub drains_all: u64,
    pub drain_ms: f64,
    pub vmstat_delta: BTreeMap<String, i64>,
    /// Natural (not injected) terminations the kernel did not count as a failed migration.
    pub unmatched_terminations: u64,
    /// Terminations that are not the seed's failure: a normal VM's pin that failed with
    /// another errno than ENOMEM, a protected VM's EFAULT without a failed migration, or
    /// another errno from KVM_RUN. Not in `terminated` (nor the rate); they fail the cell's
    /// KTAP test.
    #[serde(default)]
    pub terminated_other: u64,
    /// errno name (or "EFAULT without pgmigrate_fail") -> count, of `terminated_other`.
    #[serde(default)]
    pub other_terminations: BTreeMap<String, u64>,
    /// Why the cell cannot be trusted, if it cannot: any VM that crashed, timed out, hit a
    /// VMM error or failed its guest check, a termination that is not the seed's failure,
    /// or one the kernel did not count as a failed migration. Empty = clean.
    #[serde(default)]
    pub problems: Vec<String>,
    pub wall_s: f64,
    /// Failed pins by signature (docs/FAILURES.md) over the cell's VMs, terminated and
    /// retried alike.
    #[serde(default)]
    pub signatures: BTreeMap<String, u64>,
    /// Failed pins whose failed migration the kernel's trace showed (`--trace`).
    #[serde(default)]
    pub failures_with_kernel_event: u64,
    /// Median over VMs of each VM's median fault-in → pin time, µs.
    #[serde(default)]
    pub fault_to_pin_p50_us: f64,
    /// The cell's VMs ran with `--trace`.
    #[serde(default)]
    pub traced: bool,
}

/// The signatures that mean "a pending mlock batch held the folio" (decided or inferred).
pub const MLOCK_BATCH_SIGNATURES: [&str; 2] = ["mlock-batch-pending", "mlock-batch-after-lru-add"];

impl CellSummary {
    /// Failed pins explained, and how many of them a pending mlock batch explains.
    pub fn failures_explained(&self) -> (u64, u64) {
        let all = self.signatures.values().sum();
        let batch = MLOCK_BATCH_SIGNATURES
            .iter()
            .filter_map(|s| self.signatures.get(*s))
            .sum();
        (all, batch)
    }
}

/// A difference between two policies of the same backing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub backing: String,
    pub a: String,
    pub b: String,
    pub diff: f64,
    pub diff_lo: f64,
    pub diff_hi: f64,
    pub fisher_p: f64,
}

/// Summarises records per cell, in a fixed order (backing, fault-in, then policy as the CLI
/// lists them), whatever order concurrent runs finished in.
pub fn summarize(records: &[RunRecord]) -> Vec<CellSummary> {
    let mut by: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.cell.clone()).or_default().push(r);
    }
    let mut cells: Vec<CellSummary> = by.iter().map(|(c, rs)| cell_summary(c, rs)).collect();
    let rank = |list: &[&str], v: &str| list.iter().position(|x| *x == v).unwrap_or(list.len());
    cells.sort_by_key(|c| {
        (
            rank(&["shmem", "anon"], &c.backing),
            rank(&["pin", "touch"], &c.fault_in),
            rank(
                &["none", "lru-add-drain", "mlock-drain", "retry"],
                &c.policy,
            ),
            c.cell.clone(),
        )
    });
    cells
}

/// Whether a terminated run counts as the seed's failure (a long-term pin that failed because
/// a migration failed). Normal VMs: pinvmm's own pin failed with ENOMEM, what GUP returns
/// when a folio could not be migrated (or the failure was injected). Protected VMs: pKVM
/// turns every failed pin into KVM_RUN = EFAULT (`pkvm_mem_abort()`: `ret != 1` → -EFAULT),
/// and KVM_RUN also returns EFAULT for faults that are not pins at all, so the errno alone
/// proves nothing: an EFAULT counts only when the VM's own /proc/vmstat delta shows a failed
/// migration (`pgmigrate_fail` > 0; keep `--jobs 1`). Returns Err(reason) for a termination
/// that is not the seed's failure.
pub fn counted_termination(r: &RunRecord) -> Result<(), String> {
    if r.injected_at.is_some() {
        return Ok(());
    }
    let errno = r.termination_errno.as_deref().unwrap_or("no errno");
    let migration_failed = r.vmstat_delta.get("pgmigrate_fail").copied().unwrap_or(0) > 0;
    match (r.vm_type.as_str(), errno) {
        ("protected", "EFAULT") if migration_failed => Ok(()),
        ("protected", "EFAULT") => Err("EFAULT without pgmigrate_fail".into()),
        ("protected", e) => Err(e.to_owned()),
        (_, "ENOMEM") => Ok(()),
        (_, e) => Err(e.to_owned()),
    }
}

fn cell_summary(cell: &str, rs: &[&RunRecord]) -> CellSummary {
    let count = |o: &str| rs.iter().filter(|r| r.outcome == o).count() as u64;
    let runs = rs.len() as u64;
    let mut other_terminations: BTreeMap<String, u64> = BTreeMap::new();
    for r in rs.iter().filter(|r| r.outcome == "terminated") {
        if let Err(why) = counted_termination(r) {
            *other_terminations.entry(why).or_default() += 1;
        }
    }
    let terminated_other: u64 = other_terminations.values().sum();
    let terminated = count("terminated") - terminated_other;
    let (rate_lo, rate_hi) = wilson(terminated, runs, Z95);
    let mut vmstat: BTreeMap<String, i64> = BTreeMap::new();
    for r in rs {
        for (k, v) in &r.vmstat_delta {
            *vmstat.entry(k.clone()).or_default() += v;
        }
    }
    let unmatched = rs
        .iter()
        .filter(|r| r.outcome == "terminated" && r.injected_at.is_none())
        .filter(|r| counted_termination(r).is_ok())
        .filter(|r| r.vmstat_delta.get("pgmigrate_fail").copied().unwrap_or(0) <= 0)
        .count() as u64;
    let mut problems = Vec::new();
    for (what, n) in [
        ("crashed", count("crashed")),
        ("timed out", count("timeout")),
        ("hit a VMM error", count("vmm-error")),
        ("failed the guest check", count("guest-failed")),
    ] {
        if n > 0 {
            problems.push(format!("{n} VMs {what}"));
        }
    }
    for (why, n) in &other_terminations {
        problems.push(format!(
            "{n} terminations that are not the seed's failure ({why})"
        ));
    }
    if unmatched > 0 {
        problems.push(format!(
            "{unmatched} terminations without a pgmigrate_fail in the VM's /proc/vmstat delta"
        ));
    }
    let first = rs[0];
    let model = match &first.model {
        Some(m) if rs.iter().all(|r| r.model.as_ref() == Some(m)) => m.clone(),
        Some(_) => "mixed".into(),
        None => String::new(),
    };
    CellSummary {
        cell: cell.to_owned(),
        policy: first.policy.clone(),
        backing: first.backing.clone(),
        fault_in: first.fault_in.clone(),
        model,
        runs,
        completed: count("completed"),
        terminated,
        terminated_injected: rs
            .iter()
            .filter(|r| r.outcome == "terminated" && r.injected_at.is_some())
            .count() as u64,
        runs_injected: rs.iter().filter(|r| r.injected_at.is_some()).count() as u64,
        guest_failed: count("guest-failed"),
        vmm_error: count("vmm-error"),
        timeout: count("timeout"),
        crashed: count("crashed"),
        rate: if runs > 0 {
            terminated as f64 / runs as f64
        } else {
            0.0
        },
        rate_lo,
        rate_hi,
        pins_attempted: rs.iter().map(|r| r.pins_attempted).sum(),
        pins_failed: rs.iter().map(|r| r.pins_failed).sum(),
        pins_retried: rs.iter().map(|r| r.pins_retried).sum(),
        fault_p50_us: median(&rs.iter().map(|r| r.fault_p50_us).collect::<Vec<_>>()),
        fault_p99_us: median(&rs.iter().map(|r| r.fault_p99_us).collect::<Vec<_>>()),
        pin_p50_us: median(&rs.iter().map(|r| r.pin_p50_us).collect::<Vec<_>>()),
        pin_p99_us: median(&rs.iter().map(|r| r.pin_p99_us).collect::<Vec<_>>()),
        drains_local: rs.iter().map(|r| r.drains_local).sum(),
        drains_all: rs.iter().map(|r| r.drains_all).sum(),
        drain_ms: rs.iter().map(|r| r.drain_ms).sum(),
        vmstat_delta: vmstat,
        unmatched_terminations: unmatched,
        terminated_other,
        other_terminations,
        problems,
        wall_s: rs.iter().map(|r| r.wall_ms).sum::<f64>() / 1e3,
        signatures: rs
            .iter()
            .flat_map(|r| &r.failures)
            .fold(BTreeMap::new(), |mut m, f| {
                *m.entry(f.signature.clone()).or_default() += 1;
                m
            }),
        failures_with_kernel_event: rs
            .iter()
            .flat_map(|r| &r.failures)
            .filter(|f| f.kernel_event)
            .count() as u64,
        traced: rs.iter().any(|r| r.kernel_pin_failed.is_some()),
        fault_to_pin_p50_us: median(
            &rs.iter()
                .map(|r| r.fault_to_pin_p50_us)
                .filter(|&v| v > 0.0)
                .collect::<Vec<_>>(),
        ),
    }
}

/// Every pair of policies within a backing (and fault-in order).
pub fn compare(cells: &[CellSummary]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for (i, a) in cells.iter().enumerate() {
        for b in &cells[i + 1..] {
            if a.backing != b.backing || a.fault_in != b.fault_in {
                continue;
            }
            let (diff, diff_lo, diff_hi) =
                newcombe_diff(a.terminated, a.runs, b.terminated, b.runs, Z95);
            out.push(Comparison {
                backing: a.backing.clone(),
                a: a.policy.clone(),
                b: b.policy.clone(),
                diff,
                diff_lo,
                diff_hi,
                fisher_p: fisher_exact(
                    a.terminated,
                    a.runs - a.terminated,
                    b.terminated,
                    b.runs - b.terminated,
                ),
            });
        }
    }
    out
}

/// A bound a policy's rate is expected to meet (`--expect none>0,mlock-drain==0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub policy: String,
    pub op: String,
    pub value: f64,
}

impl Expectation {
    /// Parses a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Expectation>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    fn parse(s: &str) -> Result<Expectation, String> {
        let s = s.trim();
        let ops = ["==", "!=", ">=", "=>", "<=", "=<", ">", "<"];
        let (i, op) = ops
            .iter()
            .filter_map(|op| s.find(op).map(|i| (i, *op)))
            .min_by_key(|(i, op)| (*i, std::cmp::Reverse(op.len())))
            .ok_or_else(|| {
                format!("expectation '{s}' has no comparison (use e.g. none>0 or mlock-drain==0)")
            })?;
        let policy = s[..i].trim().to_owned();
        let value: f64 = s[i + op.len()..]
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| (0.0..=1.0).contains(v))
            .ok_or_else(|| {
                format!("expectation '{s}': the bound must be a rate between 0 and 1")
            })?;
        let op = match op {
            "=>" => ">=",
            "=<" => "<=",
            o => o,
        };
        if policy.is_empty() {
            return Err(format!("expectation '{s}' names no policy"));
        }
        Ok(Expectation {
            policy,
            op: op.to_owned(),
            value,
        })
    }

    /// Whether `rate` meets the bound.
    pub fn holds(&self, rate: f64) -> bool {
        match self.op.as_str() {
            "==" => rate == self.value,
            "!=" => rate != self.value,
            ">=" => rate >= self.value,
            "<=" => rate <= self.value,
            ">" => rate > self.value,
            _ => rate < self.value,
        }
    }
}

/// KTAP v1: one test per cell, ok when the cell meets every expectation for its policy.
pub fn ktap(cells: &[CellSummary], expect: &[Expectation], header: &str) -> (String, bool) {
    let mut s = String::from("KTAP version 1\n");
    let _ = writeln!(s, "# {header}");
    let _ = writeln!(s, "1..{}", cells.len());
    let mut all_ok = true;
    for (i, c) in cells.iter().enumerate() {
        let mine: Vec<&Expectation> = expect.iter().filter(|e| e.policy == c.policy).collect();
        let mut failed: Vec<String> = mine
            .iter()
            .filter(|e| !e.holds(c.rate))
            .map(|e| format!("expected rate {}{}", e.op, e.value))
            .collect();
        // A rate is only as good as its runs: a cell with a VM that crashed, timed out, hit a
        // VMM error, failed its check or was terminated for another reason is not ok,
        // whatever its rate.
        failed.extend(c.problems.iter().cloned());
        let ok = failed.is_empty();
        all_ok &= ok;
        let mut detail = format!(
            "terminated {}/{} rate {:.4} [{:.4}, {:.4}] model {}",
            c.terminated,
            c.runs,
            c.rate,
            c.rate_lo,
            c.rate_hi,
            if c.model.is_empty() { "?" } else { &c.model }
        );
        if !c.signatures.is_empty() {
            let sigs: Vec<String> = c
                .signatures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = write!(detail, "; failed pins: {}", sigs.join(", "));
        }
        let _ = writeln!(
            s,
            "# {}: {detail}{}",
            c.cell,
            if failed.is_empty() {
                String::new()
            } else {
                format!("; {}", failed.join(", "))
            }
        );
        let _ = writeln!(
            s,
            "{} {} {}",
            if ok { "ok" } else { "not ok" },
            i + 1,
            c.cell
        );
    }
    (s, all_ok)
}

/// Failed pins by signature, one row per cell that had any (empty when none did), and the
/// share a pending mlock batch explains.
pub fn signature_table(cells: &[CellSummary]) -> String {
    let mut names: Vec<&str> = MLOCK_BATCH_SIGNATURES.to_vec();
    for c in cells {
        for k in c.signatures.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let rows: Vec<&CellSummary> = cells.iter().filter(|c| !c.signatures.is_empty()).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "failed pins by signature (docs/FAILURES.md; a VM keeps its first 64 explained):\n",
    );
    let _ = write!(s, "{:<28} {:>15}", "cell", "explained/failed");
    for n in &names {
        let _ = write!(s, " {:>w$}", n, w = n.len().max(5));
    }
    let _ = writeln!(s, " {:>14} {:>13}", "mlock batch", "kernel event");
    for c in rows {
        let (all, batch) = c.failures_explained();
        let failed = c.pins_failed.max(all);
        let _ = write!(s, "{:<28} {:>15}", c.cell, format!("{all}/{failed}"));
        for n in &names {
            let v = c.signatures.get(*n).copied().unwrap_or(0);
            let _ = write!(s, " {:>w$}", v, w = n.len().max(5));
        }
        let share = format!(
            "{:.0}% ({batch}/{all})",
            100.0 * batch as f64 / all.max(1) as f64
        );
        let kernel = if c.traced {
            format!("{}/{all}", c.failures_with_kernel_event)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(s, " {share:>14} {kernel:>13}");
    }
    s
}

/// The terminal table.
pub fn table(cells: &[CellSummary], comps: &[Comparison]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>5} {:>6} {:>5} {:>11} {:>17} {:>9} {:>9} {:>8} {:>9}",
        "cell",
        "runs",
        "termd",
        "other",
        "rate",
        "95% CI",
        "pins",
        "pin-fail",
        "fault50",
        "drain ms"
    );
    for c in cells {
        let other = c.guest_failed + c.vmm_error + c.timeout + c.crashed + c.terminated_other;
        let _ = writeln!(
            s,
            "{:<28} {:>5} {:>6} {:>5} {:>11.4} {:>17} {:>9} {:>9} {:>7.1}µ {:>9.1}",
            c.cell,
            c.runs,
            c.terminated,
            other,
            c.rate,
            format!("[{:.4}, {:.4}]", c.rate_lo, c.rate_hi),
            c.pins_attempted,
            c.pins_failed,
            c.fault_p50_us,
            c.drain_ms
        );
        for p in &c.problems {
            let _ = writeln!(s, "  !! {p}: check the measurement");
        }
    }
    if let Some(n) = cells.iter().map(|c| c.runs).min().filter(|&n| n > 0) {
        let _ = writeln!(
            s,
            "0 terminations in {n} runs bounds the rate below {:.4} (95%)",
            zero_upper_bound(n)
        );
    }
    for c in comps {
        let _ = writeln!(
            s,
            "{} {} - {}: {:+.4} [{:+.4}, {:+.4}], Fisher p = {:.3}",
            c.backing, c.a, c.b, c.diff, c.diff_lo, c.diff_hi, c.fisher_p
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::journal::tests::record;
    use super::*;

    #[test]
    fn cells_rates_and_comparisons() {
        let mut rs = Vec::new();
        for i in 0..20 {
            rs.push(record(
                "shmem/none",
                i,
                if i < 10 { "terminated" } else { "completed" },
            ));
            rs.push(record("shmem/mlock-drain", i, "completed"));
        }
        rs[0].vmstat_delta.insert("pgmigrate_fail".into(), 1);
        let mut reversed = rs.clone();
        reversed.reverse();
        let cells = summarize(&reversed);
        assert_eq!(cells.len(), 2);
        assert_eq!(
            (cells[0].cell.as_str(), cells[0].terminated, cells[0].runs),
            ("shmem/none", 10, 20)
        );
        assert!((cells[0].rate - 0.5).abs() < 1e-12);
        assert_eq!(cells[0].unmatched_terminations, 9);
        let comps = compare(&cells);
        assert_eq!(comps.len(), 1);
        assert!(
            comps[0].diff_lo > 0.0 && comps[0].fisher_p < 0.001,
            "{:?}",
            comps[0]
        );
        assert!(table(&cells, &comps).contains("shmem/none"));
    }

    #[test]
    fn only_the_seeds_failure_counts_and_bad_runs_fail_the_cell() {
        let mut rs = Vec::new();
        let mut t = |cell: &str, run, vm: &str, errno: &str, fail: i64| {
            let mut r = record(cell, run, "terminated");
            r.vm_type = vm.into();
            r.termination_errno = Some(errno.into());
            r.vmstat_delta.insert("pgmigrate_fail".into(), fail);
            rs.push(r);
        };
        t("shmem/none", 0, "normal", "ENOMEM", 1);
        t("shmem/none", 1, "normal", "EFAULT", 0);
        t("shmem/none", 2, "normal", "ENOMEM", 0);
        t("prot/none", 0, "protected", "EFAULT", 1);
        t("prot/none", 1, "protected", "EFAULT", 0);
        t("prot/none", 2, "protected", "ENOMEM", 0);
        rs.push(record("shmem/mlock-drain", 0, "completed"));
        rs.push(record("shmem/mlock-drain", 1, "timeout"));
        let cells = summarize(&rs);
        let by = |n: &str| cells.iter().find(|c| c.cell == n).unwrap();
        let n = by("shmem/none");
        assert_eq!((n.terminated, n.terminated_other), (2, 1));
        assert_eq!(n.other_terminations.get("EFAULT"), Some(&1));
        assert_eq!(n.unmatched_terminations, 1, "ENOMEM without pgmigrate_fail");
        let p = by("prot/none");
        assert_eq!(
            (p.terminated, p.terminated_other, p.unmatched_terminations),
            (1, 2, 0)
        );
        assert_eq!(
            p.other_terminations.get("EFAULT without pgmigrate_fail"),
            Some(&1)
        );
        let d = by("shmem/mlock-drain");
        assert_eq!((d.terminated, d.timeout), (0, 1));
        // The rate meets `==0`, but a VM timed out: not ok.
        let e = Expectation::parse_list("mlock-drain==0,none>0").unwrap();
        let (k, ok) = ktap(&cells, &e, "t");
        assert!(!ok);
        assert!(k.contains("not ok") && k.contains("1 VMs timed out"), "{k}");
        let clean = summarize(&[record("shmem/mlock-drain", 0, "completed")]);
        assert!(clean[0].problems.is_empty());
        assert!(ktap(&clean, &e[..1], "t").1);
    }

    #[test]
    fn expectations_and_ktap() {
        let e = Expectation::parse_list("none>0, mlock-drain==0,retry=>0.5").unwrap();
        assert_eq!(
            e[0],
            Expectation {
                policy: "none".into(),
                op: ">".into(),
                value: 0.0
            }
        );
        assert_eq!(e[2].op, ">=");
        assert!(Expectation::parse_list("none").is_err());
        assert!(Expectation::parse_list("none>2").is_err());
        let mut rs = vec![
            record("shmem/none", 0, "terminated"),
            record("shmem/mlock-drain", 0, "terminated"),
        ];
        for r in &mut rs {
            r.vmstat_delta.insert("pgmigrate_fail".into(), 1);
        }
        rs.push(record("shmem/none", 1, "completed"));
        let cells = summarize(&rs);
        let (k, ok) = ktap(&cells, &e, "test");
        assert!(!ok);
        assert!(k.starts_with("KTAP version 1\n"), "{k}");
        assert!(
            k.contains("\n1..2\n")
                && k.contains("\nok 1 shmem/none\n")
                && k.contains("\nnot ok 2 shmem/mlock-drain\n"),
            "{k}"
        );
    }
}
