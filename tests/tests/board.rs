// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The arm64 board smoke test: cross-builds the static aarch64 pinvmm, boots the emulated arm64
//! board (QEMU virt, EL2, real KVM) in protected mode with a 512 MiB ZONE_MOVABLE on the fixed
//! 6.12.118 kernel, and inside it runs memtouch under every drain policy, `probe` and
//! `gup-check`, the `crash` guest on 1 and 2 vCPUs (reported by its exception vectors at once),
//! `hello` on 2 vCPUs (its line exactly once) and the multi-vCPU matrix once a cell — every VM
//! with its threads under the aarch64 seccomp filters (probe shows a denied call failing with
//! EPERM; one run with `--no-seccomp`). A few minutes; needs root, apt (QEMU, Debian's
//! rustc-web) and the kernel .deb.
//!
//! The protected-VM trial boots Debian's 7.3.4 (pKVM protected VMs, `--vm-type protected`): a
//! memtouch guest with `--prefill 50` under every policy, `crash` and `hello` on 2 vCPUs, and
//! probe's EPERM self-test, every VM with every thread under its seccomp filter (the vCPU
//! threads, on which KVM takes the pins, included). ~8 s once the cross build is made (7.9 s,
//! 2026-12-05, load 3.3-3.7). An opt-in trial (`-- --ignored protected_linux`, ~2 min) boots a
//! Debian arm64 Linux guest in a protected VM there, filtered too.
//!
//! Another trial runs the aarch64 build's unit tests (Image loader, device tree, registers)
//! under qemu-user, qemu-aarch64 (`ci/toolchain/test-aarch64`): the host's `cargo test` never
//! compiles those modules.
//!
//! A last trial boots a Debian arm64 Linux guest (the board's own 6.12.118 Image and the
//! guest/linux/build initramfs) under pinvmm inside the board, through `ci/board/linux-smoke`,
//! with a small workload: 166 s on its own on a quiet host (result line 54 s after launch,
//! the rest board boot and builds the smoke trial shares), 7.5 min at load average 9.5.
//! PINVMM_SKIP_BOARD_LINUX=1 skips it on purpose (loudly). The trials run one after the
//! other (one board at a time).
//!
//! The explain trial boots the unfixed 6.12.43 and is the suite's check of the unfixed kernel:
//! a short campaign (stress model `--fault-in touch`, `hello`, 8 VMs a policy) with
//! `--expect none>0,lru-add-drain==0,mlock-drain==0,retry==0` must terminate VMs under `none`,
//! none under the drains or retry, every cell clean (no crash, timeout, VMM error, termination
//! without its pgmigrate_fail). It also checks that every failed pin is explained
//! (docs/FAILURES.md): `gup-check --states` reproduces the flag rules (each failed pin of the
//! cross-CPU case has the pending-mlock-batch signature, of the noise case a mlock-batch
//! signature), and a small `campaign --trace` gives every terminated VM's failure its PFN,
//! zone, flags, CPUs, verdict and the kernel's own migrate event. About a minute and a half.
//!
//! The x86_64 board (ci/board/run --arch amd64: QEMU TCG's AMD SVM with nested paging, Debian's
//! amd64 6.12.118 with kvm_amd) gets the same smoke trial with a static x86_64 pinvmm
//! (ci/toolchain/static-x86_64): memtouch under every policy, `probe` (backend svm) and
//! `gup-check`; and an x86 Linux trial: Debian's amd64 bzImage under pinvmm in that board
//! (`ci/board/linux-smoke --arch amd64`, the same small workload), which is NOT in the default
//! run (5-13 min of board time here, past ci/test's budget): `cargo test -p pinvmm-tests --test
//! board -- --ignored x86_linux` runs it.
//!
//! Where the tools cannot be had, the test is skipped LOUDLY (counted as ignored); with
//! PINVMM_REQUIRE_BOARD=1 (.ci/run) that is a failure. PINVMM_SKIP_BOARD=1 skips it on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ensure;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

const KERNEL: &str = "6.12.118";
const POLICIES: [&str; 4] = ["none", "lru-add-drain", "mlock-drain", "retry"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn sh(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Tools the board needs; Err(reason) when they cannot be had here.
fn prepare() -> Result<PathBuf, String> {
    let r = root();
    sh(
        Command::new(r.join("ci/toolchain/cross-aarch64"))
            .arg("--setup")
            .current_dir(&r),
        "cross toolchain setup",
    )?;
    sh(
        Command::new(r.join("ci/board/setup"))
            .arg(KERNEL)
            .current_dir(&r),
        "board setup",
    )?;
    let out = sh(
        Command::new(r.join("ci/toolchain/cross-aarch64"))
            .args(["--release", "--", "-p", "pinvmm", "--bin", "pinvmm"])
            .current_dir(&r),
        "aarch64 cross-build",
    )?;
    let bin = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    if !bin.exists() {
        return Err(format!("cross-build printed no binary path: {out}"));
    }
    Ok(bin)
}

/// `crash` on `vcpus` vCPUs: exit 4, every vCPU reporting EC 0 (undefined instruction) at the
/// payload's first instruction, long before the timeout (a hang guard).
fn check_crash(rep: &serde_json::Value, vcpus: usize, what: &str) -> Result<(), Failed> {
    let v = rep["vcpus"].as_array().ok_or("no vcpus")?;
    println!(
        "  {what}: {} after {:.0} ms of guest time",
        rep["summary"],
        rep["timing"]["guest_ms"].as_f64().unwrap_or(0.0)
    );
    ensure(
        rep["exit_code"] == 4
            && v.len() == vcpus
            && v.iter()
                .all(|v| v["exception"]["class"] == 0 && v["exception"]["pc"] == 0x8000_0000u64)
            && rep["timing"]["guest_ms"].as_f64() < Some(60_000.0),
        || format!("{what}: not an undefined-instruction exception on every vCPU: {rep}"),
    )
}

/// Boots the arm64 board on `kernel` (protected mode, 512 MiB ZONE_MOVABLE) with the static
/// pinvmm `bin`, runs `script` (sh) in it and returns its results directory.
fn boot(
    bin: &Path,
    kernel: &str,
    name: &str,
    timeout_s: u32,
    script: &str,
) -> Result<PathBuf, Failed> {
    boot_with(bin, kernel, name, timeout_s, &[], script)
}

/// [`boot`] with `files` (`SRC:DEST`, ci/board/run's `--file`) copied into the board.
fn boot_with(
    bin: &Path,
    kernel: &str,
    name: &str,
    timeout_s: u32,
    files: &[String],
    script: &str,
) -> Result<PathBuf, Failed> {
    let r = root();
    let results = r.join(format!("target/board-results/{name}"));
    let st = Command::new(r.join("ci/board/run"))
        .args([
            "--kernel",
            kernel,
            "--mode",
            "protected",
            "--memory",
            "movable",
        ])
        .args(["--timeout", &timeout_s.to_string(), "--bin"])
        .arg(bin)
        .args(files.iter().flat_map(|f| ["--file", f.as_str()]))
        .arg("--results")
        .arg(&results)
        .args(["--", "sh", "-c", script])
        .current_dir(&r)
        .status()
        .map_err(|e| format!("ci/board/run: {e}"))?;
    ensure(st.code() == Some(0), || {
        format!(
            "board run ({kernel}) exited with {st} (125 = the board itself failed; see {}/console.log)",
            results.display()
        )
    })?;
    Ok(results)
}

fn read_json(results: &Path, f: &str) -> Result<serde_json::Value, Failed> {
    let t = std::fs::read_to_string(results.join(f)).map_err(|e| format!("{f}: {e}"))?;
    Ok(serde_json::from_str(&t).map_err(|e| format!("{f}: {e}"))?)
}

/// Every thread of the VM ran under its seccomp filter: `config.seccomp` is `all` (`pinvmm
/// run`'s default: vCPU, resolver and main threads) and every vCPU says its thread was
/// filtered.
fn check_filtered(rep: &serde_json::Value, what: &str) -> Result<(), Failed> {
    ensure(
        rep["config"]["seccomp"] == "all"
            && rep["vcpus"]
                .as_array()
                .is_some_and(|v| !v.is_empty() && v.iter().all(|v| v["seccomp"] == true)),
        || {
            format!(
                "{what}: not every thread filtered: config.seccomp {}, vcpus[].seccomp {:?}",
                rep["config"]["seccomp"],
                rep["vcpus"]
                    .as_array()
                    .map(|v| v.iter().map(|v| v["seccomp"].clone()).collect::<Vec<_>>())
            )
        },
    )
}

/// The multi-vCPU matrix inside the board: every fast payload, every policy, 1, 2 and 4 vCPUs.
const MATRIX: &str = "pinvmm stress --payloads memtouch,hello,crash,oob,garbage,spin --vcpus 1,2,4 --runs 1 --mem 2M --backings shmem --parallel 2 --quiet --json matrix.json";

fn smoke(bin: &Path) -> Result<(), Failed> {
    let script = format!(
        "for p in {}; do pinvmm run --mem 4M --policy $p --timeout 240 --quiet --json $p.json; echo \"$p $?\" >> codes.txt; done; \
         pinvmm probe --json probe.json > probe.txt; pinvmm gup-check --pages 512 --rounds 1 > gup.ktap; echo \"gup $?\" >> codes.txt; \
         pinvmm run --guest crash --mem 4M --timeout 240 --quiet --json crash.json; echo \"crash $?\" >> codes.txt; \
         pinvmm run --guest crash --vcpus 2 --mem 4M --timeout 240 --quiet --json crash2.json; echo \"crash2 $?\" >> codes.txt; \
         pinvmm run --guest hello --vcpus 2 --mem 4M --timeout 240 --quiet --json hello2.json; echo \"hello2 $?\" >> codes.txt; \
         pinvmm run --no-seccomp --mem 4M --timeout 240 --quiet --json noseccomp.json; echo \"noseccomp $?\" >> codes.txt; \
         {MATRIX}; echo \"matrix $?\" >> codes.txt",
        POLICIES.join(" ")
    );
    let results = boot(bin, KERNEL, "smoke", 1200, &script)?;
    let read = |f: &str| std::fs::read_to_string(results.join(f)).map_err(|e| format!("{f}: {e}"));
    let codes = read("codes.txt")?;
    println!("board ({KERNEL}, protected, movable) exit codes:\n{codes}");
    for p in POLICIES {
        let rep: serde_json::Value = serde_json::from_str(&read(&format!("{p}.json"))?)
            .map_err(|e| format!("{p}.json: {e}"))?;
        let pins = &rep["resolver"]["pins"];
        println!(
            "  {p}: {} — pins ok {} failed {}",
            rep["summary"], pins["ok"], pins["failed"]
        );
        ensure(rep["outcome"] == "completed", || {
            format!(
                "{p}: outcome {} on the fixed kernel: {}",
                rep["outcome"], rep["summary"]
            )
        })?;
        ensure(rep["host"]["movable_bytes"].as_u64() > Some(0), || {
            format!("{p}: no ZONE_MOVABLE on the board")
        })?;
    }
    let probe: serde_json::Value =
        serde_json::from_str(&read("probe.json")?).map_err(|e| format!("probe.json: {e}"))?;
    let mode = probe["host"]["kvm_backend"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "  probe: KVM {mode}; fix by version {}; movable {} MiB",
        probe["host"]["gup_fix"],
        probe["host"]["movable_bytes"].as_u64().unwrap_or(0) >> 20
    );
    ensure(mode.contains("Protected"), || {
        format!("probe does not report protected mode: {mode}")
    })?;
    ensure(probe["host"]["gup_fix"] == "fixed", || {
        format!("probe: fix status {} on {KERNEL}", probe["host"]["gup_fix"])
    })?;
    let ktap = read("gup.ktap")?;
    ensure(
        ktap.contains("\nok 1 ") && !ktap.contains("not ok") && !ktap.contains("SKIP"),
        || format!("gup-check on {KERNEL}:\n{ktap}"),
    )?;
    let json = |f: &str| -> Result<serde_json::Value, Failed> {
        Ok(serde_json::from_str(&read(f)?).map_err(|e| format!("{f}: {e}"))?)
    };
    // The aarch64 seccomp filters: installed, a denied call gets EPERM; every VM above ran
    // with them (the default), and --no-seccomp still runs one without.
    let sc = probe["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "seccomp"))
        .ok_or("probe has no seccomp check")?;
    println!("  probe seccomp: {}", sc["detail"]);
    ensure(
        sc["ok"] == true && sc["detail"].as_str().is_some_and(|d| d.contains("EPERM")),
        || format!("seccomp on the board: {sc}"),
    )?;
    for p in POLICIES {
        check_filtered(&json(&format!("{p}.json"))?, p)?;
    }
    let nosc = json("noseccomp.json")?;
    ensure(
        nosc["exit_code"] == 0 && nosc["config"]["seccomp"] == "off",
        || format!("--no-seccomp: {}", nosc["summary"]),
    )?;
    // Guest exceptions are reported at once; hello on 2 vCPUs prints its line once.
    check_crash(&json("crash.json")?, 1, "crash")?;
    check_crash(&json("crash2.json")?, 2, "crash on 2 vCPUs")?;
    let hello = json("hello2.json")?;
    ensure(
        hello["exit_code"] == 0 && hello["console"] == "Hello from the pinvmm guest!\n",
        || format!("hello on 2 vCPUs: {}", hello["summary"]),
    )?;
    let m = json("matrix.json")?;
    println!(
        "  matrix: {} VMs, {} failed, {:.0} s",
        m["vms"],
        m["failed"],
        m["wall_s"].as_f64().unwrap_or(0.0)
    );
    ensure(m["ok"] == true && m["vms"] == 6 * 4 * 3, || {
        format!("multi-vCPU matrix on the board: {}", m["failures"])
    })?;
    Ok(())
}

/// The unfixed kernel the explain trial boots.
const UNFIXED: &str = "6.12.43";
/// What the unfixed kernel must keep doing (stress model `--fault-in touch`): terminate VMs
/// under `none`, none under a drain or retry.
const EXPECT_6_12_43: &str = "none>0,lru-add-drain==0,mlock-drain==0,retry==0";

fn explain(bin: &Path) -> Result<(), Failed> {
    let r = root();
    sh(
        Command::new(r.join("ci/board/setup"))
            .arg(UNFIXED)
            .current_dir(&r),
        "board setup (6.12.43)",
    )?;
    let results = r.join("target/board-results/explain");
    // The campaign is the stress model `--fault-in touch` (every page faulted in on CPU 0,
    // pinned on CPU 1; docs/DESIGN.md): the pKVM-exact default terminates (nearly) nothing on
    // a normal VM. --expect makes it the suite's check that the unfixed kernel still
    // terminates VMs under `none` and that every drain (and retry) still saves them; a cell
    // with a crashed, timed-out or VMM-error run, or a termination without its pgmigrate_fail,
    // is `not ok` whatever its rate.
    let script = format!(
        "pinvmm gup-check --pages 256 --rounds 1 --states --json gup.json > gup.ktap; \
         pinvmm campaign --policies {} --fault-in touch --runs 8 --guest hello --mem 16M --trace \
         --expect '{EXPECT_6_12_43}' --ktap --out camp -q > camp.txt; echo \"campaign $?\" > codes.txt",
        POLICIES.join(",")
    );
    let st = Command::new(r.join("ci/board/run"))
        .args([
            "--kernel",
            UNFIXED,
            "--mode",
            "protected",
            "--memory",
            "movable",
        ])
        .args(["--timeout", "900", "--bin"])
        .arg(bin)
        .arg("--results")
        .arg(&results)
        .args(["--", "sh", "-c", &script])
        .current_dir(&r)
        .status()
        .map_err(|e| format!("ci/board/run: {e}"))?;
    ensure(st.code() == Some(0), || {
        format!(
            "board run exited with {st} (see {}/console.log)",
            results.display()
        )
    })?;
    let read = |f: &str| std::fs::read_to_string(results.join(f)).map_err(|e| format!("{f}: {e}"));
    // The flag rules, on this kernel.
    let gup: serde_json::Value =
        serde_json::from_str(&read("gup.json")?).map_err(|e| format!("gup.json: {e}"))?;
    let cases = gup["cases"].as_array().cloned().unwrap_or_default();
    ensure(cases.len() == 4, || {
        format!("gup-check --states ran {} cases", cases.len())
    })?;
    for c in &cases {
        let name = c["name"].as_str().unwrap_or("?");
        let failed = c["failed"].as_u64().unwrap_or(0);
        let mut by_sig = std::collections::BTreeMap::<String, u64>::new();
        for st in c["states"].as_object().into_iter().flat_map(|m| m.values()) {
            for (k, v) in st["signatures"].as_object().into_iter().flatten() {
                *by_sig.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        println!("  gup-check {name}: {failed} failed, signatures {by_sig:?}");
        let explained: u64 = by_sig.values().sum();
        ensure(explained == failed, || {
            format!("{name}: {failed} failed pins, {explained} with a verdict")
        })?;
        let batch = |s: &str| s.starts_with("mlock-batch-");
        match name {
            "prefill_fault_cpu0_pin_cpu1_no_drain" => ensure(
                failed > 0 && by_sig.get("mlock-batch-pending") == Some(&failed),
                || format!("{name}: expected every failure pending-mlock-batch: {by_sig:?}"),
            )?,
            "fresh_noise31_fault_cpu0_pin_cpu1" => {
                ensure(failed > 0 && by_sig.keys().all(|k| batch(k)), || {
                    format!("{name}: expected mlock-batch signatures: {by_sig:?}")
                })?
            }
            _ => ensure(failed == 0, || {
                format!("{name}: {failed} failed with a drain or on one CPU")
            })?,
        }
    }
    // The unfixed kernel's check (--expect): exit 0 only if every cell met its expectation
    // and had no bad run; the KTAP lines name the model.
    let camp = read("camp.txt")?;
    println!("  campaign on {UNFIXED} (model stress:touch), --expect {EXPECT_6_12_43}:\n{camp}");
    ensure(read("codes.txt")?.trim() == "campaign 0", || {
        format!("campaign --expect '{EXPECT_6_12_43}' failed on {UNFIXED}:\n{camp}")
    })?;
    ensure(
        camp.contains("model stress:touch") && !camp.contains("not ok"),
        || format!("campaign KTAP: expected every cell ok, model stress:touch:\n{camp}"),
    )?;
    // A campaign's failures, each with its facts and the kernel's event.
    let mut terminated = 0;
    for line in read("camp/runs.jsonl")?.lines() {
        let r: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("runs.jsonl: {e}"))?;
        let cell = r["cell"].as_str().unwrap_or("?");
        if r["outcome"] != "terminated" {
            // Only `retry` survives a failed pin: each of its failures says `retried`.
            ensure(
                r["failures"].as_array().is_none_or(|f| {
                    f.iter()
                        .all(|x| cell == "shmem/retry" && x["outcome"] == "retried")
                }),
                || format!("{cell}: a VM that was not terminated has failures: {r}"),
            )?;
            continue;
        }
        terminated += 1;
        ensure(cell == "shmem/none", || format!("{cell}: a VM terminated"))?;
        let f = &r["failures"][0];
        ensure(
            f["pfn"].is_u64()
                && f["zone"] == "Movable"
                && f["flags_after"].is_string()
                && f["fault_cpu"] == 0
                && f["pin_cpu"] == 1
                && f["kernel_event"] == true
                && f["signature"].as_str().is_some_and(batch_sig),
            || format!("{cell}: failure not fully explained: {f}"),
        )?;
        ensure(r["kernel_pin_failed"] == 1, || {
            format!(
                "{cell}: the kernel's trace counts {} failed migrations",
                r["kernel_pin_failed"]
            )
        })?;
    }
    println!(
        "  campaign --trace on {UNFIXED}: {terminated} VMs terminated, each failure explained"
    );
    ensure(terminated > 0, || {
        "no VM terminated under none on 6.12.43".to_string()
    })?;
    Ok(())
}

fn batch_sig(s: &str) -> bool {
    s.starts_with("mlock-batch-")
}

/// The kernel of the protected-VM trial: Debian's 7.3.4 (fixed; `ci/board/kernels 7.3`), the
/// first board kernel with pKVM protected VMs (`--vm-type protected`).
const KERNEL_PKVM: &str = "7.3";

/// Real pKVM protected VMs, filtered: on Debian's 7.3 the loader writes a memtouch guest with
/// `--prefill 50` through the mlocked mapping and KVM pins every page on the vCPU's thread —
/// which now runs KVM_RUN under the vCPU filter — under every policy; `crash` and `hello` on 2
/// vCPUs; probe's EPERM self-test on that kernel. Every VM must have every thread filtered.
fn protected(bin: &Path) -> Result<(), Failed> {
    let r = root();
    sh(
        Command::new(r.join("ci/board/setup"))
            .arg(KERNEL_PKVM)
            .current_dir(&r),
        "board setup (7.3)",
    )?;
    let run = "pinvmm run --vm-type protected --mem 2M --timeout 240 --quiet";
    let script = format!(
        "pinvmm probe --json probe.json > probe.txt; echo \"probe $?\" >> codes.txt; \
         for p in {}; do {run} --prefill 50 --policy $p --json $p.json; echo \"$p $?\" >> codes.txt; done; \
         {run} --guest crash --vcpus 2 --json crash2.json; echo \"crash2 $?\" >> codes.txt; \
         {run} --guest hello --vcpus 2 --json hello2.json; echo \"hello2 $?\" >> codes.txt",
        POLICIES.join(" ")
    );
    let results = boot(bin, KERNEL_PKVM, "protected", 900, &script)?;
    let codes = std::fs::read_to_string(results.join("codes.txt")).map_err(|e| e.to_string())?;
    println!("board ({KERNEL_PKVM}, protected VMs) exit codes:\n{codes}");
    let probe = read_json(&results, "probe.json")?;
    let mode = probe["host"]["kvm_backend"].as_str().unwrap_or_default();
    let sc = probe["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "seccomp"))
        .ok_or("probe has no seccomp check")?;
    println!(
        "  probe on {KERNEL_PKVM}: KVM {mode}; seccomp: {}",
        sc["detail"]
    );
    ensure(mode.contains("Protected"), || {
        format!("probe does not report protected mode on {KERNEL_PKVM}: {mode}")
    })?;
    ensure(
        sc["ok"] == true && sc["detail"].as_str().is_some_and(|d| d.contains("EPERM")),
        || format!("seccomp on {KERNEL_PKVM}: {sc}"),
    )?;
    for p in POLICIES {
        let rep = read_json(&results, &format!("{p}.json"))?;
        let prot = &rep["protected"];
        println!(
            "  protected {p}: {} — loader pages {} (prefill {}), EFAULTs {}, guest {:.0} ms",
            rep["summary"],
            prot["loader_pages"],
            prot["prefilled_pages"],
            prot["efaults"],
            rep["timing"]["guest_ms"].as_f64().unwrap_or(0.0)
        );
        ensure(
            rep["exit_code"] == 0
                && rep["outcome"] == "completed"
                && rep["config"]["vm_type"] == "protected"
                && prot["prefilled_pages"].as_u64() > Some(0)
                && prot["efaults"] == 0,
            || {
                format!(
                    "protected VM, {p}, on the fixed {KERNEL_PKVM}: {}",
                    rep["summary"]
                )
            },
        )?;
        check_filtered(&rep, &format!("protected {p}"))?;
    }
    let crash = read_json(&results, "crash2.json")?;
    check_crash(&crash, 2, "protected crash on 2 vCPUs")?;
    check_filtered(&crash, "protected crash")?;
    let hello = read_json(&results, "hello2.json")?;
    ensure(
        hello["exit_code"] == 0 && hello["console"] == "Hello from the pinvmm guest!\n",
        || format!("protected hello on 2 vCPUs: {}", hello["summary"]),
    )?;
    check_filtered(&hello, "protected hello")
}

/// The protected Linux trial's guest: Debian's arm64 6.12.118 Image and the workload initramfs,
/// a small workload (docs/PKVM.md's fixed-kernel row: result line at 47-49 s).
const PROTECTED_LINUX_ARGS: &str = "--mem 128M --cmdline 'pinvmm.fill=4M pinvmm.forks=0 pinvmm.tmpfs=1M' --policy mlock-drain --timeout 600";

/// A Linux guest in a real pKVM protected VM on Debian's 7.3.4, every thread filtered: KVM pins
/// each of its pages on the vCPU's thread (the loader writes the Image, initramfs and device
/// tree through the mlocked mapping first). Not in the default suite (~2 min of board time
/// past the protected trial's boot): `-- --ignored protected_linux`.
fn protected_linux(bin: &Path) -> Result<(), Failed> {
    let r = root();
    sh(
        Command::new(r.join("ci/board/setup"))
            .arg(KERNEL_PKVM)
            .current_dir(&r),
        "board setup (7.3)",
    )?;
    let initrd = r.join("target/linux-smoke/initrd-arm64.cpio.gz");
    std::fs::create_dir_all(r.join("target/linux-smoke")).map_err(|e| e.to_string())?;
    sh(
        Command::new(r.join("guest/linux/build"))
            .args(["--arch", "arm64", "--out"])
            .arg(&initrd)
            .current_dir(&r),
        "guest/linux/build --arch arm64",
    )?;
    let image = sh(
        Command::new(r.join("ci/board/kernels"))
            .arg(KERNEL)
            .current_dir(&r),
        "ci/board/kernels",
    )?;
    let image = image.lines().last().unwrap_or_default().trim().to_owned();
    let files = [
        format!("{image}:/data/Image"),
        format!("{}:/data/initrd.gz", initrd.display()),
    ];
    let script = format!(
        "pinvmm run --vm-type protected --kernel /data/Image --initrd /data/initrd.gz {PROTECTED_LINUX_ARGS} --json lin.json > lin.txt 2>&1; echo \"linux $?\" >> codes.txt"
    );
    let results = boot_with(bin, KERNEL_PKVM, "protected-linux", 900, &files, &script)?;
    let rep = read_json(&results, "lin.json")?;
    let l = &rep["linux"];
    println!(
        "  protected linux guest ({KERNEL} in {KERNEL_PKVM}): {} — result line {} ms, loader pages {}, EFAULTs {}",
        rep["summary"],
        l["result_line_ms"],
        rep["protected"]["loader_pages"],
        rep["protected"]["efaults"]
    );
    ensure(
        rep["exit_code"] == 0
            && rep["outcome"] == "completed"
            && rep["config"]["vm_type"] == "protected"
            && l["checksum_verified"] == true
            && rep["protected"]["efaults"] == 0,
        || {
            format!(
                "protected Linux guest on the fixed {KERNEL_PKVM}: {}",
                rep["summary"]
            )
        },
    )?;
    check_filtered(&rep, "protected linux guest")
}

/// Policy, guest memory and workload of the Linux trial: small, so the nested boot (every
/// stage-2 fault ~1-2 ms under TCG) stays within a few minutes.
const LINUX_POLICY: &str = "mlock-drain";
const LINUX_ARGS: [&str; 6] = [
    "--mem",
    "256M",
    "--fill",
    "16M",
    "--cmdline",
    "pinvmm.forks=1 pinvmm.tmpfs=4M",
];

fn linux_guest() -> Result<(), Failed> {
    let r = root();
    let results = r.join("target/board-results/linux-smoke-test");
    let st = Command::new(r.join("ci/board/linux-smoke"))
        .args(["--kernel", KERNEL, "--policy", LINUX_POLICY])
        .args(LINUX_ARGS)
        .arg("--results")
        .arg(&results)
        .current_dir(&r)
        .status()
        .map_err(|e| format!("ci/board/linux-smoke: {e}"))?;
    let json = results.join(format!("{LINUX_POLICY}.json"));
    let rep: serde_json::Value = std::fs::read_to_string(&json)
        .map_err(|e| format!("{}: {e} (linux-smoke exited {st})", json.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", json.display())))?;
    let l = &rep["linux"];
    let pins = &rep["resolver"]["pins"];
    println!(
        "  linux guest ({KERNEL} in {KERNEL}, {LINUX_POLICY}): {} — first output {} ms, result line {} ms, pins ok {} failed {}",
        rep["summary"], l["first_console_ms"], l["result_line_ms"], pins["ok"], pins["failed"]
    );
    ensure(st.code() == Some(0), || {
        format!(
            "linux-smoke exited with {st}: {} (console: {}/console.log)",
            rep["summary"],
            results.display()
        )
    })?;
    ensure(
        rep["outcome"] == "completed" && l["checksum_verified"] == true && l["end"] == "poweroff",
        || format!("not a verified, powered-off guest: {}", rep["summary"]),
    )?;
    ensure(
        pins["failed"] == 0 && pins["ok"].as_u64() > Some(10_000),
        || format!("pins on the fixed kernel: {pins}"),
    )?;
    // The Linux guest ran with every thread under its seccomp filter (pinvmm run's default).
    check_filtered(&rep, "linux guest")
}

/// A board trial: skipped loudly (or failed, with PINVMM_REQUIRE_BOARD=1) where the board's
/// tools cannot be had.
fn board_trial(name: String, body: fn(&Path) -> Result<(), Failed>) -> Trial {
    Trial::ignorable_test(name.clone(), move || {
        if std::env::var("PINVMM_SKIP_BOARD").is_ok_and(|v| v == "1") {
            eprintln!("!!! SKIPPED {name}: PINVMM_SKIP_BOARD=1");
            return Ok(Completion::ignored_with("PINVMM_SKIP_BOARD=1"));
        }
        match prepare() {
            Ok(bin) => body(&bin).map(|()| Completion::Completed),
            Err(why) if std::env::var("PINVMM_REQUIRE_BOARD").is_ok_and(|v| v == "1") => Err(
                format!("the board is required here (PINVMM_REQUIRE_BOARD=1) but: {why}").into(),
            ),
            Err(why) => {
                eprintln!("!!! SKIPPED {name}: the arm64 board cannot run here: {why}");
                Ok(Completion::ignored_with(format!("no board: {why}")))
            }
        }
    })
    .with_kind("board")
}

// ---- the x86_64 board: QEMU TCG's AMD SVM with nested paging, Debian amd64 kernels with kvm_amd
// (ci/board/run --arch amd64). x86 has no pKVM: ordinary VMs whose faults the resolver pins.

/// The x86 board's kernel: Debian's amd64 6.12.118 (fixed), so every policy must complete.
const X86_KERNEL: &str = "6.12.118";

/// What the x86 board needs; Err(reason) when it cannot be had here.
fn prepare_x86() -> Result<PathBuf, String> {
    let r = root();
    sh(
        Command::new(r.join("ci/toolchain/static-x86_64"))
            .arg("--setup")
            .current_dir(&r),
        "static x86_64 toolchain check",
    )?;
    sh(
        Command::new(r.join("ci/board/setup"))
            .args(["--arch", "amd64", X86_KERNEL])
            .current_dir(&r),
        "x86 board setup",
    )?;
    let out = sh(
        Command::new(r.join("ci/toolchain/static-x86_64"))
            .args(["--release", "--", "-p", "pinvmm", "--bin", "pinvmm"])
            .current_dir(&r),
        "static x86_64 build",
    )?;
    let bin = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    if !bin.exists() {
        return Err(format!("static x86_64 build printed no binary path: {out}"));
    }
    Ok(bin)
}

fn x86_smoke(bin: &Path) -> Result<(), Failed> {
    let r = root();
    let results = r.join("target/board-results/x86-smoke");
    let script = format!(
        "for p in {}; do pinvmm run --mem 4M --policy $p --timeout 240 --quiet --json $p.json; echo \"$p $?\" >> codes.txt; done; \
         pinvmm probe --json probe.json > probe.txt; pinvmm gup-check --pages 512 --rounds 1 > gup.ktap; echo \"gup $?\" >> codes.txt",
        POLICIES.join(" ")
    );
    let st = Command::new(r.join("ci/board/run"))
        .args([
            "--arch",
            "amd64",
            "--kernel",
            X86_KERNEL,
            "--memory",
            "movable",
            "--timeout",
            "900",
            "--bin",
        ])
        .arg(bin)
        .arg("--results")
        .arg(&results)
        .args(["--", "sh", "-c", &script])
        .current_dir(&r)
        .status()
        .map_err(|e| format!("ci/board/run: {e}"))?;
    ensure(st.code() == Some(0), || {
        format!(
            "x86 board run exited with {st} (125 = the board itself failed; see {}/console.log)",
            results.display()
        )
    })?;
    let read = |f: &str| std::fs::read_to_string(results.join(f)).map_err(|e| format!("{f}: {e}"));
    let codes = read("codes.txt")?;
    println!("x86 board ({X86_KERNEL}, svm, movable) exit codes:\n{codes}");
    for p in POLICIES {
        let rep: serde_json::Value = serde_json::from_str(&read(&format!("{p}.json"))?)
            .map_err(|e| format!("{p}.json: {e}"))?;
        let pins = &rep["resolver"]["pins"];
        println!(
            "  {p}: {} — pins ok {} failed {}",
            rep["summary"], pins["ok"], pins["failed"]
        );
        ensure(rep["outcome"] == "completed", || {
            format!(
                "{p}: outcome {} on the fixed kernel: {}",
                rep["outcome"], rep["summary"]
            )
        })?;
        ensure(pins["ok"].as_u64() > Some(0) && pins["failed"] == 0, || {
            format!("{p}: pins {pins}")
        })?;
        ensure(rep["host"]["movable_bytes"].as_u64() > Some(0), || {
            format!("{p}: no ZONE_MOVABLE on the x86 board")
        })?;
    }
    let probe: serde_json::Value =
        serde_json::from_str(&read("probe.json")?).map_err(|e| format!("probe.json: {e}"))?;
    let backend = probe["host"]["kvm_backend"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "  probe: KVM {backend}; fix by version {}; movable {} MiB",
        probe["host"]["gup_fix"],
        probe["host"]["movable_bytes"].as_u64().unwrap_or(0) >> 20
    );
    ensure(backend.contains("svm"), || {
        format!("probe does not report an SVM backend: {backend}")
    })?;
    ensure(probe["host"]["gup_fix"] == "fixed", || {
        format!(
            "probe: fix status {} on {X86_KERNEL}",
            probe["host"]["gup_fix"]
        )
    })?;
    let ktap = read("gup.ktap")?;
    ensure(
        ktap.contains("\nok 1 ") && !ktap.contains("not ok") && !ktap.contains("SKIP"),
        || format!("gup-check on the x86 board ({X86_KERNEL}):\n{ktap}"),
    )?;
    Ok(())
}

/// The x86 Linux trial: Debian's amd64 bzImage of the board kernel under pinvmm in the x86 board.
const X86_LINUX_POLICY: &str = "mlock-drain";

fn x86_linux_guest() -> Result<(), Failed> {
    let r = root();
    let results = r.join("target/board-results/x86-linux-smoke-test");
    let st = Command::new(r.join("ci/board/linux-smoke"))
        .args([
            "--arch",
            "amd64",
            "--kernel",
            X86_KERNEL,
            "--policy",
            X86_LINUX_POLICY,
        ])
        .args(LINUX_ARGS)
        .arg("--results")
        .arg(&results)
        .current_dir(&r)
        .status()
        .map_err(|e| format!("ci/board/linux-smoke --arch amd64: {e}"))?;
    let json = results.join(format!("{X86_LINUX_POLICY}.json"));
    let rep: serde_json::Value = std::fs::read_to_string(&json)
        .map_err(|e| format!("{}: {e} (linux-smoke exited {st})", json.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", json.display())))?;
    let l = &rep["linux"];
    let pins = &rep["resolver"]["pins"];
    let unmapped: u64 = rep["vcpus"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|c| c["exits"]["unmapped"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "  x86 linux guest ({X86_KERNEL} in {X86_KERNEL}, {X86_LINUX_POLICY}): {} — first output {} ms, result line {} ms, pins ok {} failed {}, unmapped port/MMIO accesses {unmapped}",
        rep["summary"], l["first_console_ms"], l["result_line_ms"], pins["ok"], pins["failed"]
    );
    ensure(st.code() == Some(0), || {
        format!(
            "linux-smoke --arch amd64 exited with {st}: {} (console: {}/console.log)",
            rep["summary"],
            results.display()
        )
    })?;
    ensure(
        rep["outcome"] == "completed" && l["checksum_verified"] == true,
        || format!("not a verified guest: {}", rep["summary"]),
    )?;
    ensure(
        pins["failed"] == 0 && pins["ok"].as_u64() > Some(10_000),
        || format!("pins on the fixed kernel: {pins}"),
    )?;
    Ok(())
}

/// An x86 board trial: skipped loudly (or failed, with PINVMM_REQUIRE_BOARD=1) where the x86
/// board's tools cannot be had.
fn x86_board_trial(name: String, body: fn(&Path) -> Result<(), Failed>) -> Trial {
    Trial::ignorable_test(name.clone(), move || {
        if std::env::var("PINVMM_SKIP_BOARD").is_ok_and(|v| v == "1") {
            eprintln!("!!! SKIPPED {name}: PINVMM_SKIP_BOARD=1");
            return Ok(Completion::ignored_with("PINVMM_SKIP_BOARD=1"));
        }
        match prepare_x86() {
            Ok(bin) => body(&bin).map(|()| Completion::Completed),
            Err(why) if std::env::var("PINVMM_REQUIRE_BOARD").is_ok_and(|v| v == "1") => Err(
                format!("the x86 board is required here (PINVMM_REQUIRE_BOARD=1) but: {why}")
                    .into(),
            ),
            Err(why) => {
                eprintln!("!!! SKIPPED {name}: the x86_64 board cannot run here: {why}");
                Ok(Completion::ignored_with(format!("no x86 board: {why}")))
            }
        }
    })
    .with_kind("board")
}

fn main() {
    let mut args = Arguments::from_args();
    // One board at a time: each takes both CPUs of the host.
    args.test_threads.get_or_insert(1);
    let linux = format!("board::linux_guest_{KERNEL}_protected_movable_{LINUX_POLICY}");
    let linux = if std::env::var("PINVMM_SKIP_BOARD_LINUX").is_ok_and(|v| v == "1") {
        Trial::ignorable_test(linux.clone(), move || {
            eprintln!("!!! SKIPPED {linux}: PINVMM_SKIP_BOARD_LINUX=1");
            Ok(Completion::ignored_with("PINVMM_SKIP_BOARD_LINUX=1"))
        })
        .with_kind("board")
    } else {
        board_trial(linux, |_| linux_guest())
    };
    let smoke = board_trial(
        format!("board::smoke_{KERNEL}_protected_movable_all_policies"),
        smoke,
    );
    let unit = board_trial("board::aarch64_unit_tests_under_qemu_user".into(), |_| {
        let st = Command::new(root().join("ci/toolchain/test-aarch64"))
            .current_dir(root())
            .status()
            .map_err(|e| format!("ci/toolchain/test-aarch64: {e}"))?;
        ensure(st.success(), || {
            format!("aarch64 unit tests under qemu-user: {st}")
        })
    });
    let explain = board_trial(
        format!("board::explain_{UNFIXED}_protected_movable_failed_pins"),
        explain,
    );
    let protected = board_trial(
        format!("board::protected_vms_{KERNEL_PKVM}_all_policies_filtered"),
        protected,
    );
    // Not in the default suite (~2 min of board time): `-- --ignored protected_linux`.
    let protected_linux = board_trial(
        format!("board::protected_linux_guest_{KERNEL_PKVM}_filtered"),
        protected_linux,
    )
    .with_ignored_flag(true);
    let x86_smoke = x86_board_trial(
        format!("board::x86_smoke_{X86_KERNEL}_svm_movable_all_policies"),
        x86_smoke,
    );
    // Not in the default suite: under pins it takes 5-13 min of board time on this host (the
    // guest's boot is ~30 000 pins under TCG), past ci/test's 20-minute budget. `-- --ignored
    // x86_linux` (or `--include-ignored`) runs it; ci/board/linux-smoke --arch amd64 is the command.
    let x86_linux = format!("board::x86_linux_guest_{X86_KERNEL}_svm_movable_{X86_LINUX_POLICY}");
    let x86_linux = x86_board_trial(x86_linux, |_| x86_linux_guest()).with_ignored_flag(true);
    let trials = vec![
        unit,
        smoke,
        protected,
        protected_linux,
        explain,
        linux,
        x86_smoke,
        x86_linux,
    ];
    libtest_mimic::run(&args, trials).exit();
}
