// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! pinvmm as a user who is not root: `run`, `campaign`, `gup-check`, `stress` and `probe`
//! either work or stop with one line naming the limit and how to grant it, and never panic.
//!
//! As root (CI) the test makes the user itself: `useradd` a system user `pinvmm-unpriv` in
//! group `kvm` (created if missing), gives group `kvm` read-write access to /dev/kvm (Debian's
//! default), copies the binary where that user can run it, and runs it through `setpriv` under
//! an 8 MiB RLIMIT_MEMLOCK (`prlimit`). /dev/userfaultfd is first closed to the user (then a
//! pinned VM must stop with the line naming /dev/userfaultfd and vm.unprivileged_userfaultfd,
//! exit 3, unless that sysctl is 1), then opened to group `kvm` for the rest, and finally put
//! back as it was. Not root: the same checks run as the calling user, as it is.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use common::{ensure, kvm_test, tally};
use libtest_mimic::{Arguments, Failed};

const USER: &str = "pinvmm-unpriv";
const GROUP: &str = "kvm";
/// The limit the user's commands run under (Debian's default for a login).
const MEMLOCK: &str = "8388608";

fn root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    ensure(out.status.success(), || {
        format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The user, its group membership and /dev/kvm for group kvm (as root).
fn make_user() -> Result<(), Failed> {
    if Command::new("getent")
        .args(["group", GROUP])
        .output()
        .map_err(|e| e.to_string())?
        .stdout
        .is_empty()
    {
        sh(&["groupadd", "-r", GROUP])?;
    }
    if Command::new("id")
        .arg(USER)
        .output()
        .map_err(|e| e.to_string())?
        .status
        .success()
    {
        sh(&["usermod", "-a", "-G", GROUP, USER])?;
    } else {
        sh(&[
            "useradd",
            "-r",
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            "-G",
            GROUP,
            USER,
        ])?;
    }
    let kvm = std::fs::metadata("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    let gid: u32 = sh(&["getent", "group", GROUP])?
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .ok_or("cannot read the kvm group's id")?;
    if kvm.gid() != gid || kvm.mode() & 0o060 != 0o060 {
        sh(&["chgrp", GROUP, "/dev/kvm"])?;
        sh(&["chmod", "g+rw", "/dev/kvm"])?;
        eprintln!("unprivileged: /dev/kvm is now group {GROUP}, mode 0660 (Debian's default)");
    }
    Ok(())
}

/// Where the user's commands run: the binary (0755) and a work directory the user owns.
struct Sandbox {
    dir: PathBuf,
    bin: PathBuf,
    work: PathBuf,
}

impl Sandbox {
    fn new() -> Result<Self, Failed> {
        let dir = std::env::temp_dir().join(format!("pinvmm-unpriv-{}", std::process::id()));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let bin = dir.join("pinvmm");
        std::fs::copy(common::pinvmm_bin()?, &bin).map_err(|e| format!("copy pinvmm: {e}"))?;
        for (p, mode) in [(&dir, 0o755), (&bin, 0o755), (&work, 0o777)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        if root() {
            sh(&["chown", USER, work.to_str().ok_or("path")?])?;
        }
        Ok(Self { dir, bin, work })
    }

    /// Runs `pinvmm ARGS` as the user (as root: through setpriv and prlimit).
    fn pinvmm(&self, args: &[&str]) -> Result<(i32, String, String), Failed> {
        let mut cmd = if root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", USER, "--regid", USER, "--init-groups", "prlimit"])
                .arg(format!("--memlock={MEMLOCK}:{MEMLOCK}"))
                .arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.work)
            .output()
            .map_err(|e| format!("pinvmm {args:?}: {e}"))?;
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        ensure(!o.contains("panicked") && !e.contains("panicked"), || {
            format!("pinvmm {args:?} panicked: {e}")
        })?;
        tally::add(&tally::INPUTS, 1);
        Ok((out.status.code().unwrap_or(-1), o, e))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// /dev/userfaultfd's owner and mode, put back when dropped.
struct UffdDevice {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl UffdDevice {
    const PATH: &str = "/dev/userfaultfd";

    fn save() -> Option<Self> {
        let m = std::fs::metadata(Self::PATH).ok()?;
        Some(Self {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })
    }

    fn set(owner: &str, mode: &str) -> Result<(), Failed> {
        sh(&["chown", owner, Self::PATH])?;
        sh(&["chmod", mode, Self::PATH])?;
        Ok(())
    }
}

impl Drop for UffdDevice {
    fn drop(&mut self) {
        let _ = sh(&["chown", &format!("{}:{}", self.uid, self.gid), Self::PATH]);
        let _ = sh(&["chmod", &format!("{:o}", self.mode), Self::PATH]);
    }
}

/// One line on stderr with every `needles`, exit `code`.
fn one_line(
    r: &(i32, String, String),
    code: i32,
    needles: &[&str],
    what: &str,
) -> Result<(), Failed> {
    let err = r.2.trim_end();
    ensure(
        r.0 == code && err.lines().count() == 1 && needles.iter().all(|n| err.contains(n)),
        || {
            format!(
                "{what}: exit {} (want {code}), want one line naming {needles:?}: {err}",
                r.0
            )
        },
    )
}

fn ok(r: &(i32, String, String), what: &str) -> Result<(), Failed> {
    ensure(r.0 == 0, || format!("{what}: exit {}: {}{}", r.0, r.1, r.2))
}

fn unprivileged() -> Result<(), Failed> {
    if root() {
        make_user()?;
    }
    let sb = Sandbox::new()?;
    let unpriv_sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .is_ok_and(|v| v.trim() == "1");
    // 1. No grant for kernel-mode userfaultfds: a pinned VM stops with the line naming the
    //    grants (or runs, where the sysctl allows it); --stage2 kernel needs none.
    let saved = if root() { UffdDevice::save() } else { None };
    if saved.is_some() {
        UffdDevice::set("root:root", "0600")?;
        let r = sb.pinvmm(&["run", "--mem", "4M"])?;
        if unpriv_sysctl {
            ok(&r, "run with vm.unprivileged_userfaultfd=1")?;
        } else {
            one_line(
                &r,
                3,
                &["/dev/userfaultfd", "vm.unprivileged_userfaultfd"],
                "run without a userfaultfd grant",
            )?;
        }
        let r = sb.pinvmm(&["probe"])?;
        ensure(
            unpriv_sysctl || (r.0 == 3 && r.1.contains("userfaultfd    FAIL")),
            || format!("probe without a userfaultfd grant: exit {}: {}", r.0, r.1),
        )?;
        UffdDevice::set(&format!("root:{GROUP}"), "0660")?;
    }
    ok(
        &sb.pinvmm(&["run", "--mem", "4M", "--stage2", "kernel"])?,
        "run --stage2 kernel",
    )?;
    // 2. With the grant: VMs run; what does not fit RLIMIT_MEMLOCK stops with one line.
    let r = sb.pinvmm(&["run", "--mem", "4M"])?;
    if saved.is_none() && r.0 == 3 {
        // No grant this test could give (not root, or no /dev/userfaultfd): the line must
        // name the grants; nothing more runs pinned.
        return one_line(
            &r,
            3,
            &["vm.unprivileged_userfaultfd"],
            "run without a grant",
        );
    }
    ok(&r, "run")?;
    for args in [
        &[
            "run",
            "--mem",
            "4M",
            "--backing",
            "anon",
            "--policy",
            "lru-add-drain",
        ][..],
        &[
            "run",
            "--mem",
            "4M",
            "--stage2",
            "eager",
            "--policy",
            "mlock-drain",
        ],
        &["run", "--mem", "2M", "--guest", "hello", "--vcpus", "2"],
        &["run", "--mem", "2M", "--guest", "crash"],
    ] {
        let r = sb.pinvmm(args)?;
        let want = if args.contains(&"crash") { 4 } else { 0 };
        ensure(r.0 == want, || {
            format!("{args:?}: exit {} (want {want}): {}{}", r.0, r.1, r.2)
        })?;
    }
    let memlock = ["RLIMIT_MEMLOCK", "CAP_IPC_LOCK", "ulimit -l"];
    if root() {
        one_line(
            &sb.pinvmm(&["run", "--mem", "64M"])?,
            2,
            &memlock,
            "run above the limit",
        )?;
        one_line(
            &sb.pinvmm(&[
                "campaign", "--runs", "1", "--mem", "4M", "--jobs", "4", "--out", "c4",
            ])?,
            2,
            &memlock,
            "campaign --jobs 4 above the limit",
        )?;
        one_line(
            &sb.pinvmm(&["gup-check", "--force"])?,
            4, // kselftest's SKIP: every case skipped, naming the limit
            &memlock,
            "gup-check above the limit",
        )?;
    }
    let r = sb.pinvmm(&[
        "campaign",
        "--policies",
        "none,mlock-drain",
        "--runs",
        "2",
        "--mem",
        "4M",
        "--out",
        "camp",
    ])?;
    ok(&r, "campaign")?;
    tally::add(&tally::VMS, 4);
    let r = sb.pinvmm(&["gup-check", "--force", "--pages", "256", "--rounds", "1"])?;
    // Every case runs; without CAP_SYS_ADMIN it cannot tell whether a pin had to migrate
    // anything, so a case that did not fail is a SKIP (kselftest exit 4), never an `ok`.
    ensure(
        r.0 == 0 || (r.0 == 4 && r.1.contains("# SKIP") && !r.1.contains("not ok")),
        || format!("gup-check: exit {}: {}{}", r.0, r.1, r.2),
    )?;
    ensure(!root() || r.1.contains("CAP_SYS_ADMIN"), || {
        format!("gup-check does not note the hidden page frames: {}", r.1)
    })?;
    let r = sb.pinvmm(&[
        "stress",
        "--runs",
        "1",
        "--mem",
        "2M",
        "--parallel",
        "2",
        "--quiet",
    ])?;
    ok(&r, "stress")?;
    ok(&sb.pinvmm(&["probe"])?, "probe")?;
    drop(saved);
    eprintln!(
        "unprivileged: run, campaign, gup-check, stress and probe as {}: each works or names its limit",
        if root() { USER } else { "this user" }
    );
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // It changes /dev/userfaultfd's mode for a while: alone.
    args.test_threads = Some(1);
    common::announce();
    let t = vec![kvm_test(
        "unprivileged::run_campaign_gup_check_as_a_user",
        unprivileged,
    )];
    common::run_and_count("unprivileged", &args, t)
}
