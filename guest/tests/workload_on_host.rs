// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Runs the pinvmm-workload binary on the host (small sizes, --stdout) and checks its result
//! line the way the VMM does: parse, then recompute the checksum.

use std::process::Command;

use guest::workload::{ResultLine, Status, expected_checksum};

/// Runs the workload with its own churn directory (`tag` keeps parallel tests apart).
fn run(tag: &str, cmdline: &str) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("pinvmm-workload-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pinvmm-workload"))
        .args(["--stdout", "--cmdline", cmdline, "--dir"])
        .arg(&dir)
        .output()
        .expect("run pinvmm-workload");
    let _ = std::fs::remove_dir(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_run_prints_one_verifiable_line() {
    let (code, stdout, stderr) = run(
        "good",
        "console=ttyS0 pinvmm.fill=3M pinvmm.seed=99 pinvmm.forks=2 pinvmm.tmpfs=256K",
    );
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line = ResultLine::parse(&stdout).unwrap();
    assert_eq!(line.status, Status::Ok);
    assert_eq!(line.fill_bytes, 3 << 20);
    assert_eq!(line.seed, 99);
    assert_eq!(line.tmpfs_bytes, 256 << 10);
    assert_eq!(line.forks, 2);
    assert_eq!(line.checksum, expected_checksum(3 << 20, 99));
    line.verify().unwrap();
    assert!(stderr.contains("re-verify"), "{stderr}");
}

#[test]
fn bad_parameters_still_print_a_failed_line() {
    let (code, stdout, stderr) = run("bad", "pinvmm.fill=lots");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("pinvmm.fill=lots: not a size"), "{stderr}");
    let line = ResultLine::parse(&stdout).unwrap();
    assert_eq!(line.status, Status::Failed);
    assert!(line.verify().is_err());
}
