// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm campaign` end to end: resume after SIGKILL (no run lost, none duplicated), a clean
//! stop on SIGINT, KTAP, and the statistics checked against a known truth (injected failures).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ensure, kvm_test, pinvmm, pinvmm_bin};
use libtest_mimic::{Arguments, Failed};

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinvmm-campaign-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn journal_keys(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(str::to_owned))
        .collect()
}

const SMALL: &[&str] = &["--policies", "none,mlock-drain", "--mem", "4M", "--quiet"];

fn campaign_args(dir: &Path, runs: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "campaign".into(),
        "--runs".into(),
        runs.to_string(),
        "--out".into(),
        dir.display().to_string(),
    ];
    v.extend(SMALL.iter().map(|s| s.to_string()));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs `pinvmm campaign` to its end.
fn run_campaign(dir: &Path, runs: u32, extra: &[&str]) -> Result<common::CliRun, Failed> {
    let args = campaign_args(dir, runs, extra);
    pinvmm(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Starts a campaign and sends `signal` once `lines` journal lines exist; returns its exit code.
fn interrupt_after(
    dir: &Path,
    runs: u32,
    lines: usize,
    signal: i32,
) -> Result<Option<i32>, Failed> {
    let mut child = Command::new(pinvmm_bin()?)
        .args(campaign_args(dir, runs, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let t = Instant::now();
    while journal_keys(dir).len() < lines {
        // A hang guard only: five 4 MiB VMs take seconds.
        if t.elapsed() > Duration::from_secs(600)
            || child.try_wait().map_err(|e| e.to_string())?.is_some()
        {
            return Err("campaign ended or stalled before the interruption point".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY-free: kill(2) through the libc crate on our own child.
    let pid = child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
    let st = child.wait().map_err(|e| e.to_string())?;
    Ok(st.code())
}

fn main() {
    let args = Arguments::from_args();
    common::announce();
    let trials = vec![
        kvm_test(
            "campaign::sigkill_then_resume_loses_and_duplicates_nothing",
            || {
                let dir = out_dir("kill");
                let code = interrupt_after(&dir, 6, 5, libc::SIGKILL)?;
                ensure(code.is_none(), || {
                    format!("killed campaign exited with {code:?}")
                })?;
                let before = journal_keys(&dir).len();
                let r = run_campaign(&dir, 6, &["--resume"])?;
                ensure(r.code == 0, || {
                    format!("resume exit {}: {}", r.code, r.stderr)
                })?;
                let keys = journal_keys(&dir);
                let unique: HashSet<&String> = keys.iter().collect();
                println!(
                    "killed after {before} runs; after --resume: {} lines, {} unique (want 12)",
                    keys.len(),
                    unique.len()
                );
                ensure(keys.len() == 12 && unique.len() == 12, || {
                    format!("{} lines, {} unique: {keys:?}", keys.len(), unique.len())
                })?;
                // Resuming a finished campaign runs nothing more.
                let r = run_campaign(&dir, 6, &["--resume"])?;
                ensure(r.code == 0 && journal_keys(&dir).len() == 12, || {
                    "second resume changed the journal".into()
                })?;
                // Without --resume, an existing campaign is refused.
                let r = run_campaign(&dir, 6, &[])?;
                ensure(r.code == 2 && r.stderr.contains("--resume"), || {
                    format!("{} {}", r.code, r.stderr)
                })?;
                // Resuming with other settings is refused.
                let r = run_campaign(&dir, 6, &["--resume", "--prefill", "10"])?;
                ensure(
                    r.code == 2 && r.stderr.contains("different settings"),
                    || format!("{} {}", r.code, r.stderr),
                )?;
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            },
        ),
        kvm_test("campaign::sigint_stops_cleanly_with_code_7", || {
            let dir = out_dir("int");
            let code = interrupt_after(&dir, 20, 3, libc::SIGINT)?;
            ensure(code == Some(7), || format!("exit {code:?}, want 7"))?;
            let keys = journal_keys(&dir);
            ensure(keys.len() < 40 && dir.join("summary.json").exists(), || {
                format!(
                    "{} runs, summary? {}",
                    keys.len(),
                    dir.join("summary.json").exists()
                )
            })?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }),
        kvm_test("campaign::ktap_and_injected_truth_is_covered", || {
            // Known truth: each VM fails one pin with probability 0.3 (fixed seed: deterministic).
            let dir = out_dir("truth");
            let r = run_campaign(
                &dir,
                40,
                &[
                    "--inject-pin-failure-rate",
                    "0.3",
                    "--ktap",
                    "--expect",
                    "none>0,mlock-drain>0",
                    "--jobs",
                    "2",
                ],
            )?;
            ensure(r.code == 0, || {
                format!("exit {}: {}{}", r.code, r.stdout, r.stderr)
            })?;
            ensure(
                r.stdout.starts_with("KTAP version 1\n")
                    && r.stdout.contains("\n1..2\n")
                    && r.stdout.contains("\nok 1 shmem/none\n"),
                || r.stdout.clone(),
            )?;
            let sum: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("summary.json")).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            for c in sum["cells"].as_array().ok_or("no cells")? {
                let (lo, hi) = (
                    c["rate_lo"].as_f64().unwrap_or(1.0),
                    c["rate_hi"].as_f64().unwrap_or(0.0),
                );
                println!(
                    "{}: {} of {} terminated, 95% CI [{lo:.3}, {hi:.3}] (truth 0.3)",
                    c["cell"], c["terminated"], c["runs"]
                );
                ensure(lo <= 0.3 && 0.3 <= hi, || {
                    format!("{}: interval [{lo}, {hi}] misses the truth 0.3", c["cell"])
                })?;
                ensure(c["terminated"] == c["terminated_injected"], || {
                    format!("natural terminations here? {c}")
                })?;
            }
            let r = pinvmm(&[
                "report",
                dir.to_str().unwrap_or_default(),
                "--svg",
                dir.join("rates.svg").to_str().unwrap_or_default(),
            ])?;
            ensure(
                r.code == 0 && dir.join("rates-latency.svg").exists(),
                || format!("report: {} {}", r.code, r.stderr),
            )?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}
