// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! LAVA integration (ci/lava/, docs/BOARDS.md):
//!
//! - `lava::schemas`: every YAML in ci/lava/ (jobs, the test definition, the device
//!   configuration) passes LAVA's own schema code (`lava_common.schemas`, through
//!   ci/lava/validate.py), and a broken job is rejected by it. Where lava-common is not installed
//!   the test is skipped LOUDLY (ignored); with PINVMM_REQUIRE_LAVA=1 that is a failure.
//! - `lava::ktap_to_lava`: the board-side KTAP → `lava-test-case` mapping (sh + awk).
//! - `lava::lava_run_qemu_job` (only with PINVMM_LAVA_RUN=1: ~2.5 min): runs
//!   job-qemu-arm64.yaml with `lava-run` (ci/lava/run-local) and checks the per-cell results and
//!   the campaign directory it sends back. Needs lava-run (lava-dispatcher, or
//!   LAVA_DISPATCHER_ROOT), the ci/board tools and a static aarch64 pinvmm (PINVMM_LAVA_BIN, else
//!   built with ci/toolchain/cross-aarch64).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ensure;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn env_is(k: &str) -> bool {
    std::env::var(k).is_ok_and(|v| v == "1")
}

/// Debian's python3 (where lava-common lives), not a pyenv/venv one earlier in PATH.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn run(cmd: &mut Command) -> Result<(i32, String), Failed> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

fn validate(files: &[&Path]) -> Result<(i32, String), Failed> {
    run(Command::new(python())
        .arg(root().join("ci/lava/validate.py"))
        .args(files))
}

/// Skip (loudly) or fail, as PINVMM_REQUIRE_LAVA says.
fn missing(name: &str, why: &str) -> Result<Completion, Failed> {
    if env_is("PINVMM_REQUIRE_LAVA") {
        return Err(format!("LAVA is required here (PINVMM_REQUIRE_LAVA=1) but {why}").into());
    }
    eprintln!("!!! SKIPPED {name}: {why}. Reported as ignored, not passed.");
    Ok(Completion::ignored_with(why.to_owned()))
}

fn schemas() -> Result<Completion, Failed> {
    let dir = root().join("ci/lava");
    let mut yamls: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    yamls.sort();
    ensure(yamls.len() >= 4, || {
        format!("expected >= 4 YAML files in ci/lava, found {yamls:?}")
    })?;
    let refs: Vec<&Path> = yamls.iter().map(PathBuf::as_path).collect();
    let (code, out) = validate(&refs)?;
    if code == 3 {
        return missing(
            "lava::schemas",
            &format!(
                "LAVA's schema code is not installed (apt-get install lava-common): {}",
                out.trim()
            ),
        );
    }
    eprint!("{out}");
    ensure(code == 0, || {
        format!("ci/lava/validate.py exit {code}:\n{out}")
    })?;
    for (f, kind) in [
        ("job-qemu-arm64.yaml", "job"),
        ("job-real-board.yaml", "job"),
        ("pinvmm-campaign.yaml", "test definition"),
        ("device-qemu-arm64.yaml", "device"),
    ] {
        ensure(out.contains(&format!("{f}: {kind}")), || {
            format!("{f} was not validated as a {kind}:\n{out}")
        })?;
    }
    // The schema code must actually reject things: an unknown deploy method, a test definition
    // without its format, a bad test case name.
    let tmp = std::env::temp_dir().join(format!("pinvmm-lava-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{e}"))?;
    let job =
        std::fs::read_to_string(dir.join("job-qemu-arm64.yaml")).map_err(|e| format!("{e}"))?;
    let tdef =
        std::fs::read_to_string(dir.join("pinvmm-campaign.yaml")).map_err(|e| format!("{e}"))?;
    let bad = [
        ("bad-deploy.yaml", job.replace("to: tmpfs", "to: tmpfz")),
        (
            "bad-name.yaml",
            job.replace("name: pinvmm", "name: pin vmm"),
        ),
        (
            "bad-testdef.yaml",
            tdef.replace("name: pinvmm-campaign", "nam: pinvmm-campaign"),
        ),
    ];
    for (name, text) in &bad {
        let p = tmp.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{e}"))?;
        let (code, out) = validate(&[&p])?;
        ensure(code == 1 && out.contains("INVALID"), || {
            format!("LAVA's schema code accepted the broken {name} (exit {code}):\n{out}")
        })?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(Completion::Completed)
}

fn ktap_to_lava() -> Result<(), Failed> {
    let ktap = "KTAP version 1\n# pinvmm campaign: test\n1..3\n\
        # shmem/none: terminated 3/10 rate 0.3000 [0.1078, 0.6032]\nok 1 shmem/none\n\
        # shmem/mlock-drain: terminated 1/10 rate 0.1000 [0.0179, 0.4042]; expected rate ==0\n\
        not ok 2 shmem/mlock-drain\nok 3 anon/retry # SKIP not run\n";
    let tmp = std::env::temp_dir().join(format!("pinvmm-lava-ktap-{}.ktap", std::process::id()));
    std::fs::write(&tmp, ktap).map_err(|e| format!("{e}"))?;
    let script = root().join("ci/lava/ktap-to-lava.sh");
    let (code, out) = run(Command::new("sh")
        .arg(&script)
        .args(["campaign"])
        .arg(&tmp)
        .env("LAVA_TEST_CASE", "echo LTC"))?;
    ensure(code == 0, || format!("ktap-to-lava.sh exit {code}:\n{out}"))?;
    for want in [
        "LTC campaign_shmem_none --result pass --measurement 0.3000 --units ratio",
        "LTC campaign_shmem_mlock-drain --result fail --measurement 0.1000 --units ratio",
        "LTC campaign_anon_retry --result skip",
        "LTC campaign_ktap --result pass",
    ] {
        ensure(out.contains(want), || {
            format!("missing `{want}` in:\n{out}")
        })?;
    }
    // A KTAP cut short (plan 1..3, one test line) must be reported as a failure.
    std::fs::write(&tmp, "KTAP version 1\n1..3\nok 1 shmem/none\n").map_err(|e| format!("{e}"))?;
    let (code, out) = run(Command::new("sh")
        .arg(&script)
        .args(["campaign"])
        .arg(&tmp)
        .env("LAVA_TEST_CASE", "echo LTC"))?;
    let _ = std::fs::remove_file(&tmp);
    ensure(
        code == 1 && out.contains("LTC campaign_ktap --result fail"),
        || format!("a cut-off KTAP was not reported as failed (exit {code}):\n{out}"),
    )
}

fn lava_run_qemu_job() -> Result<Completion, Failed> {
    const NAME: &str = "lava::lava_run_qemu_job";
    if !env_is("PINVMM_LAVA_RUN") {
        eprintln!(
            "!!! SKIPPED {NAME}: set PINVMM_LAVA_RUN=1 to run the QEMU job with lava-run (~2.5 min)"
        );
        return Ok(Completion::ignored_with("PINVMM_LAVA_RUN=1 not set"));
    }
    let have_lava_run = run(Command::new("sh").args(["-c", "command -v lava-run"]))?.0 == 0
        || std::env::var_os("LAVA_DISPATCHER_ROOT").is_some();
    if !have_lava_run {
        return missing(
            NAME,
            "no lava-run (apt-get install lava-dispatcher, or set LAVA_DISPATCHER_ROOT)",
        );
    }
    let r = root();
    let bin = match std::env::var_os("PINVMM_LAVA_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let (code, out) = run(Command::new(r.join("ci/toolchain/cross-aarch64"))
                .args(["--release", "--", "-p", "pinvmm", "--bin", "pinvmm"])
                .current_dir(&r))?;
            ensure(code == 0, || format!("aarch64 cross-build failed:\n{out}"))?;
            PathBuf::from(
                out.lines()
                    .rfind(|l| l.starts_with('/'))
                    .unwrap_or_default(),
            )
        }
    };
    let work = std::env::temp_dir().join(format!("pinvmm-lava-run-{}", std::process::id()));
    let (code, out) = run(Command::new(r.join("ci/lava/run-local"))
        .arg("--bin")
        .arg(&bin)
        .arg("--work")
        .arg(&work)
        .args(["--runs", "2", "--mem", "4M", "--expect", "mlock-drain==0"])
        .current_dir(&r))?;
    eprint!("{out}");
    ensure(code == 0, || {
        format!("run-local exit {code} (log {}/lava.log)", work.display())
    })?;
    for case in [
        "pinvmm-present",
        "probe",
        "gup-check_ktap",
        "campaign-run",
        "campaign_ktap",
    ] {
        ensure(out.contains(&format!("0_pinvmm {case} pass")), || {
            format!("no passing {case}")
        })?;
    }
    for policy in ["none", "lru-add-drain", "mlock-drain"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("0_pinvmm campaign_shmem_{policy} ")))
            .ok_or_else(|| format!("no LAVA result for the shmem/{policy} cell"))?;
        ensure(line.contains(" ratio"), || {
            format!("no rate measurement: {line}")
        })?;
    }
    ensure(out.contains("lava-result lava job pass"), || {
        "the LAVA job did not pass".to_owned()
    })?;
    let summary = work.join("results/pinvmm-campaign/summary.json");
    let text =
        std::fs::read_to_string(&summary).map_err(|e| format!("{}: {e}", summary.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("summary.json: {e}"))?;
    ensure(v.is_object(), || "summary.json is not an object".to_owned())?;
    ensure(
        work.join("results/pinvmm-campaign/runs.jsonl").exists(),
        || "no runs.jsonl".to_owned(),
    )?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(Completion::Completed)
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("lava::schemas", schemas).with_kind("lava"),
        Trial::test("lava::ktap_to_lava", ktap_to_lava),
        Trial::ignorable_test("lava::lava_run_qemu_job", lava_run_qemu_job).with_kind("lava"),
    ];
    libtest_mimic::run(&args, trials).exit();
}
