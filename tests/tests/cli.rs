// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `pinvmm` binary: documented exit codes, bad input (one clear line naming the value,
//! never a panic), JSON reports, `probe`, `--help`.

mod common;

use common::{ensure, kvm_test, pinvmm, plain_test, tally};
use libtest_mimic::{Arguments, Failed, Trial};

/// Bad inputs and the text the error must contain (the bad value, named).
const BAD_INPUTS: &[(&[&str], &str)] = &[
    (&["run", "--policy", "sometimes"], "sometimes"),
    (&["run", "--backing", "floppy"], "floppy"),
    (&["run", "--guest", "doom"], "doom"),
    (&["run", "--mem", "0"], "0 bytes"),
    (&["run", "--mem", "12345"], "12345"),
    (&["run", "--mem", "64Q"], "64Q"),
    (&["run", "--mem", "lots"], "lots"),
    (&["run", "--mem", "1M"], "too small"),
    (&["run", "--mem", "99999999999G"], "too large"),
    (&["run", "--mem", "17G"], "above what pinvmm maps"),
    (&["run", "--vcpus", "0"], "0"),
    (&["run", "--vcpus", "1000"], "1000"),
    (&["run", "--prefill", "101"], "101"),
    (&["run", "--fault-cpu", "999"], "CPU 999"),
    (&["run", "--pin-cpu", "sometimes"], "sometimes"),
    (&["run", "--stride", "0"], "stride 0"),
    (&["run", "--passes", "0"], "passes 0"),
    (&["run", "--timeout", "0"], "timeout"),
    (&["run", "--timeout", "nan"], "timeout"),
    (&["run", "--inject-pin-failure", "0"], "'0'"),
    (&["run", "--inject-pin-failure", "3:EWHAT"], "EWHAT"),
    (&["run", "--stage2", "warp"], "warp"),
    (&["run", "--fault-in", "magic"], "magic"),
    (
        &["run", "--backing", "hugetlb", "--mem", "17M"],
        "2097152-byte granule",
    ),
    (&["run", "--backing", "shmem-thp", "--mem", "5M"], "6 MiB"),
    // No host reserves 8192 hugetlb pages by chance: the error names the sysctl and the count.
    (
        &["run", "--backing", "hugetlb", "--mem", "16G"],
        "needs 8192 free 2 MiB pages",
    ),
    (
        &[
            "run",
            "--json",
            "/nonexistent-dir/x/report.json",
            "--mem",
            "4M",
        ],
        "/nonexistent-dir",
    ),
    (&["frobnicate"], "frobnicate"),
    (&[], "Usage"),
];

/// Options that cannot apply to the chosen mode (vmm::applies): refused with exit 2 and one
/// line naming the option, the mode and why, instead of being silently ignored.
const NOT_APPLICABLE: &[(&[&str], &str)] = &[
    (
        &["run", "--inject-pin-failure", "1", "--stage2", "kernel"],
        "--inject pin-update cannot apply with --stage2 kernel",
    ),
    (
        &["run", "--policy", "mlock-drain", "--stage2", "kernel"],
        "--policy cannot apply with --stage2 kernel",
    ),
    (
        &["run", "--policy", "retry", "--stage2", "uffd"],
        "--policy cannot apply with --stage2 uffd",
    ),
    (
        &["run", "--noise", "16", "--stage2", "eager"],
        "--noise cannot apply with --stage2 eager",
    ),
    (
        &["run", "--prefill", "50", "--stage2", "uffd"],
        "--prefill cannot apply with --stage2 uffd",
    ),
    (
        &["run", "--fault-in", "touch", "--stage2", "kernel"],
        "--fault-in touch cannot apply",
    ),
    (
        &["run", "--fault-ahead", "15", "--stage2", "eager"],
        "--fault-ahead cannot apply",
    ),
    (
        &["run", "--guest", "hello", "--stride", "2"],
        "--stride cannot apply",
    ),
    (
        &["run", "--guest", "crash", "--seed", "7"],
        "--seed cannot apply",
    ),
    (
        &["run", "--stage2", "kernel", "--pin-cpu", "same"],
        "--pin-cpu cannot apply",
    ),
    (
        &["run", "--stage2", "kernel", "--fault-cpu", "0"],
        "--fault-cpu cannot apply",
    ),
    (
        &["run", "--inject", "uffd-copy"],
        "--inject uffd-copy cannot apply",
    ),
    (&["run", "--inject", "drain"], "--policy none never drains"),
    (
        &["run", "--backing", "anon", "--inject", "uffd-continue"],
        "--inject uffd-continue cannot apply",
    ),
];

fn not_applicable() -> Trial {
    plain_test(
        "bad_input::options_that_cannot_apply_are_refused_in_one_line",
        || {
            for (args, needle) in NOT_APPLICABLE {
                let r = pinvmm(args)?;
                tally::add(&tally::INPUTS, 1);
                let err = r.stderr.trim_end();
                ensure(r.code == 2 && r.stdout.is_empty(), || {
                    format!("{args:?}: exit {} (want 2): {err}", r.code)
                })?;
                ensure(
                    err.lines().count() == 1
                        && err.contains(needle)
                        && err.contains("leave it out"),
                    || format!("{args:?}: want one line with {needle:?}: {err}"),
                )?;
            }
            // The same options where they do apply are accepted (checked without a VM).
            let r = pinvmm(&[
                "run",
                "--print-config",
                "--policy",
                "mlock-drain",
                "--noise",
                "16",
            ])?;
            ensure(r.code == 0, || {
                format!("--policy with --stage2 pin: {}", r.stderr)
            })?;
            eprintln!(
                "options that cannot apply: {} refused",
                NOT_APPLICABLE.len()
            );
            Ok(())
        },
    )
}

/// Bad `--config FILE.json` contents and what the error must name: the field and its value.
const BAD_CONFIGS: &[(&str, &[&str])] = &[
    (r#"{"vcpus": "two"}"#, &["\"vcpus\"", "two"]),
    (r#"{"vcpus": 0}"#, &["\"vcpus\"", "0"]),
    (r#"{"vcpus": 2.5}"#, &["\"vcpus\"", "2.5"]),
    (r#"{"mem": true}"#, &["\"mem\"", "true", "a boolean"]),
    (r#"{"mem": "12345"}"#, &["12345", "multiple of"]),
    (r#"{"mem": [64]}"#, &["\"mem\"", "a list"]),
    (r#"{"policy": 3}"#, &["\"policy\"", "3", "mlock-drain"]),
    (r#"{"policy": "sometimes"}"#, &["\"policy\"", "sometimes"]),
    (r#"{"timeout": "soon"}"#, &["\"timeout\"", "soon"]),
    (
        r#"{"quiet": "yes"}"#,
        &["\"quiet\"", "true or false", "yes"],
    ),
    (r#"{"inject": 7}"#, &["\"inject\"", "7"]),
    (
        r#"{"inject": ["drain", {"site": "x"}]}"#,
        &["\"inject\"", "list of strings"],
    ),
    (r#"{"inject": ["nowhere@2"]}"#, &["\"inject\"", "nowhere"]),
    (
        r#"{"guest": null, "frobnicate": 1}"#,
        &["unknown field \"frobnicate\""],
    ),
    (r#"{"config": "other.json"}"#, &["unknown field \"config\""]),
    (r#"{"mem": "64M","#, &["not valid JSON", "line 1"]),
    ("", &["not valid JSON"]),
    (r#"["mem", "64M"]"#, &["JSON object", "a list"]),
    (r#""64M""#, &["JSON object", "a string"]),
];

/// Guest memory above RLIMIT_MEMLOCK without CAP_IPC_LOCK: pinvmm under `prlimit` (and, as
/// root, `setpriv` dropping CAP_IPC_LOCK from its bounding set, so the exec'd pinvmm lacks it).
fn memory_above_memlock() -> Result<u64, Failed> {
    let bin = common::pinvmm_bin()?;
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = std::process::Command::new(if root { "setpriv" } else { "prlimit" });
    if root {
        cmd.args(["--bounding-set=-ipc_lock", "prlimit"]);
    }
    cmd.arg("--memlock=1048576")
        .arg(bin)
        .args(["run", "--mem", "64M"]);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run setpriv/prlimit (util-linux): {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(
        out.status.code() == Some(2)
            && err.contains("RLIMIT_MEMLOCK (1048576 bytes)")
            && err.contains("67108864"),
        || format!("memory above RLIMIT_MEMLOCK: {:?}: {err}", out.status),
    )?;
    Ok(1)
}

fn bad_inputs() -> Trial {
    plain_test("bad_input::corpus_gives_exit_2_and_names_the_value", || {
        let mut tried = 0;
        let dir = std::env::temp_dir().join(format!("pinvmm-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (i, (text, needles)) in BAD_CONFIGS.iter().enumerate() {
            let file = dir.join(format!("bad{i}.json"));
            std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
            let path = file.to_str().ok_or("temp path is not UTF-8")?;
            let r = pinvmm(&["run", "--config", path])?;
            tried += 1;
            let text_out = format!("{}{}", r.stderr, r.stdout);
            ensure(r.code == 2 && !text_out.contains("panicked"), || {
                format!("config {text:?}: exit {} (want 2): {text_out}", r.code)
            })?;
            for needle in needles.iter().chain(&[path]) {
                ensure(text_out.contains(needle), || {
                    format!("config {text:?}: message does not name {needle:?}: {text_out}")
                })?;
            }
        }
        let missing = dir.join("missing.json");
        let r = pinvmm(&["run", "--config", missing.to_str().ok_or("temp path")?])?;
        tried += 1;
        ensure(r.code == 2 && r.stderr.contains("missing.json"), || {
            format!("missing config: exit {}: {}", r.code, r.stderr)
        })?;
        // Unreadable: a directory (root reads any file whatever its mode).
        let d = dir.to_str().ok_or("temp path")?;
        let r = pinvmm(&["run", "--config", d])?;
        tried += 1;
        ensure(
            r.code == 2 && r.stderr.contains(d) && r.stderr.contains("cannot read"),
            || format!("directory as config: exit {}: {}", r.code, r.stderr),
        )?;
        tried += memory_above_memlock()?;
        let _ = std::fs::remove_dir_all(&dir);
        for (args, needle) in BAD_INPUTS {
            let r = pinvmm(args)?;
            tried += 1;
            let text = format!("{}{}", r.stderr, r.stdout);
            ensure(r.code == 2, || {
                format!("{args:?}: exit {} (want 2): {text}", r.code)
            })?;
            ensure(text.contains(needle), || {
                format!("{args:?}: message does not name {needle:?}: {text}")
            })?;
            ensure(!text.contains("panicked"), || {
                format!("{args:?} panicked: {text}")
            })?;
        }
        tally::add(&tally::INPUTS, tried);
        eprintln!(
            "bad inputs tried: {tried}, all rejected with exit code 2 and a message naming the value"
        );
        Ok(())
    })
}

/// A newc cpio archive of `entries` (name, contents), as `guest/linux/build` writes one.
fn cpio(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut a = Vec::new();
    for (name, data) in entries.iter().chain(&[("TRAILER!!!", &b""[..])]) {
        a.extend_from_slice(
            format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1,
                0o100_755,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            )
            .as_bytes(),
        );
        a.extend_from_slice(name.as_bytes());
        a.push(0);
        a.resize(a.len().next_multiple_of(4), 0);
        a.extend_from_slice(data);
        a.resize(a.len().next_multiple_of(4), 0);
    }
    a
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

/// An arm64 Image header (64 bytes) with a PE/COFF section table whose raw data ends at
/// `raw_end`, claiming `image_size` bytes from the load address.
fn arm64_image(image_size: u64, raw_end: u32, file_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[0..2].copy_from_slice(b"MZ");
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[24..32].copy_from_slice(&0xau64.to_le_bytes());
    h[56..60].copy_from_slice(b"ARMd");
    h[60..64].copy_from_slice(&64u32.to_le_bytes());
    h.extend_from_slice(b"PE\0\0");
    h.extend_from_slice(&[0, 0, 1, 0]); // machine, 1 section
    h.extend_from_slice(&[0; 16]); // no optional header
    let mut sec = vec![0u8; 40];
    sec[16..20].copy_from_slice(&(raw_end - 0x1000).to_le_bytes());
    sec[20..24].copy_from_slice(&0x1000u32.to_le_bytes());
    h.extend(sec);
    h.resize(file_len, 0);
    h
}

/// An x86 bzImage header (protocol 2.15, relocatable, 64-bit entry): 4 setup sectors, then a
/// protected-mode kernel of `pm_len` bytes that decompresses into `init_size` bytes.
fn bzimage(pm_len: usize, init_size: u32) -> Vec<u8> {
    let mut h = vec![0u8; 5 * 512 + pm_len];
    let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[4]); // setup_sects
    put(0x1f4, &((pm_len / 16) as u32).to_le_bytes()); // syssize
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes());
    put(0x211, &[1]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[1]); // relocatable
    put(0x236, &3u16.to_le_bytes()); // xloadflags: 64-bit entry, above 4G
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(0x260, &init_size.to_le_bytes());
    h
}

/// Bad kernels, initramfs and command lines: exit 2, one line naming the file (or value) and
/// what is wrong. The inputs are generated here; the arm64 Image cases run where pinvmm boots
/// arm64 Images (the aarch64 build), the rest everywhere.
fn bad_linux_inputs() -> Trial {
    plain_test(
        "bad_input::linux_kernel_initrd_cmdline_give_exit_2_and_name_the_file",
        || {
            let dir = std::env::temp_dir().join(format!("pinvmm-badlinux-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let file = |name: &str, data: &[u8]| -> Result<String, Failed> {
                let p = dir.join(name);
                std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(p.display().to_string())
            };
            let kernel = file("Image", &arm64_image(0x40_0000, 0x20_0000, 0x20_0000))?;
            let init = cpio(&[("init", b"#!/bin/sh\n")]);
            let good_gz = gzip(&init);
            let mut damaged = good_gz.clone();
            damaged[14] ^= 0xff;
            damaged[15] ^= 0xff;
            let initrd = |name: &str, data: &[u8]| file(name, data);
            let dir_s = dir.display().to_string();
            let missing = format!("{dir_s}/no-such-Image");
            let mut cases: Vec<(Vec<String>, Vec<String>)> = Vec::new();
            let mut case = |args: &[&str], needles: &[&str]| {
                let mut a = vec!["run".to_owned()];
                if !args.contains(&"--mem") {
                    a.extend(["--mem".to_owned(), "64M".to_owned()]);
                }
                a.extend(args.iter().map(|s| (*s).to_owned()));
                cases.push((a, needles.iter().map(|s| (*s).to_owned()).collect()));
            };
            case(&["--kernel", &missing], &[&missing, "cannot open"]);
            let empty = file("empty", b"")?;
            case(&["--kernel", &empty], &[&empty, "kernel", "empty"]);
            case(&["--kernel", &dir_s], &[&dir_s, "not a regular file"]);
            case(
                &["--kernel", &kernel, "--initrd", &missing],
                &[&missing, "initrd", "cannot open"],
            );
            case(
                &["--kernel", &kernel, "--initrd", &empty],
                &[&empty, "initrd", "empty"],
            );
            let text = initrd("text.cpio", b"just some text\n")?;
            case(
                &["--kernel", &kernel, "--initrd", &text],
                &[&text, "not an initramfs"],
            );
            let cut = initrd("cut.cpio.gz", &good_gz[..good_gz.len() - 12])?;
            case(
                &["--kernel", &kernel, "--initrd", &cut],
                &[&cut, "truncated"],
            );
            let bad = initrd("damaged.cpio.gz", &damaged)?;
            case(&["--kernel", &kernel, "--initrd", &bad], &[&bad, "corrupt"]);
            let cut_cpio = initrd("cut.cpio", &init[..init.len() - 8])?;
            case(
                &["--kernel", &kernel, "--initrd", &cut_cpio],
                &[&cut_cpio, "truncated"],
            );
            let no_init = initrd("noinit.cpio.gz", &gzip(&cpio(&[("bin/sh", b"x")])))?;
            case(
                &["--kernel", &kernel, "--initrd", &no_init],
                &[&no_init, "no /init"],
            );
            case(
                &["--kernel", &kernel, "--cmdline", "quiet \u{7}"],
                &["printable ASCII"],
            );
            let long = "x".repeat(2100);
            case(&["--kernel", &kernel, "--cmdline", &long], &["2047 bytes"]);
            case(
                &["--kernel", &kernel, "--cmdline", "pinvmm.fill=lots"],
                &["pinvmm.fill=lots"],
            );
            case(
                &["--kernel", &kernel, "--cmdline", "pinvmm.fil=1M"],
                &["pinvmm.fil"],
            );
            case(&["--initrd", &kernel], &["--kernel"]);
            case(&["--kernel", &kernel, "--guest", "hello"], &["--guest"]);
            case(&["--kernel", &kernel, "--stride", "2"], &["--stride"]);
            case(
                &["--kernel", &kernel, "--vm-type", "protected"],
                &["protected"],
            );
            if cfg!(target_arch = "aarch64") {
                let rnd = file("random", &[0x5a; 4096])?;
                case(&["--kernel", &rnd], &[&rnd, "not an arm64 Linux Image"]);
                let gz = file(
                    "Image.gz",
                    &gzip(&arm64_image(0x40_0000, 0x20_0000, 0x20_0000)),
                )?;
                case(&["--kernel", &gz], &[&gz, "gzip"]);
                let short = file("short", &arm64_image(0x40_0000, 0x20_0000, 0x10_0000))?;
                case(&["--kernel", &short], &[&short, "truncated", "2097152"]);
                let big = file("big", &arm64_image(80 << 20, 0x20_0000, 0x20_0000))?;
                case(&["--kernel", &big], &[&big, "raise --mem"]);
                let init_big = initrd("big.cpio", &[init.clone(), vec![0; 62 << 20]].concat())?;
                case(
                    &["--kernel", &kernel, "--initrd", &init_big],
                    &[&init_big, "raise --mem"],
                );
            }
            if cfg!(target_arch = "x86_64") {
                let rnd = file("random", &[0x5a; 4096])?;
                case(&["--kernel", &rnd], &[&rnd, "not an x86 bzImage"]);
                let arm = file("arm64-Image", &arm64_image(0x40_0000, 0x20_0000, 0x20_0000))?;
                case(&["--kernel", &arm], &[&arm, "arm64 Image"]);
                let good = bzimage(0x1_0000, 0x80_0000);
                let cut = file("cut-bzImage", &good[..good.len() - 16])?;
                case(&["--kernel", &cut], &[&cut, "truncated", "syssize"]);
                let mut old = good.clone();
                old[0x206] = 0x0b;
                let old = file("old-bzImage", &old)?;
                case(&["--kernel", &old], &[&old, "unsupported", "2.11"]);
                let big = file("big-bzImage", &bzimage(0x1_0000, 80 << 20))?;
                case(&["--kernel", &big], &[&big, "raise --mem"]);
                let bz = file("bzImage", &good)?;
                let init_big = initrd("big.cpio", &[init.clone(), vec![0; 50 << 20]].concat())?;
                case(
                    &["--kernel", &bz, "--initrd", &init_big],
                    &[&init_big, "raise --mem"],
                );
                case(
                    &["--kernel", &bz, "--vcpus", "40"],
                    &["40 vCPUs", "1 to 37"],
                );
                case(&["--kernel", &bz, "--mem", "4G"], &["at most 3 GiB"]);
            }
            for (args, needles) in &cases {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = pinvmm(&a)?;
                let text = format!("{}{}", r.stderr, r.stdout);
                ensure(r.code == 2, || {
                    format!("{args:?}: exit {} (want 2): {text}", r.code)
                })?;
                for n in needles {
                    ensure(text.contains(n.as_str()), || {
                        format!("{args:?}: message does not name {n:?}: {text}")
                    })?;
                }
                ensure(!text.contains("panicked"), || {
                    format!("{args:?} panicked: {text}")
                })?;
            }
            let _ = std::fs::remove_dir_all(&dir);
            tally::add(&tally::INPUTS, cases.len() as u64);
            eprintln!(
                "bad Linux inputs tried: {}, all rejected with exit code 2 naming the file or value",
                cases.len()
            );
            Ok(())
        },
    )
}

fn exit_codes() -> Vec<Trial> {
    let case = |name: &str, args: &'static [&'static str], code: i32, outcome: &'static str| {
        kvm_test(name, move || {
            let r = pinvmm(args)?;
            ensure(r.code == code, || {
                format!("exit {} (want {code}): {}{}", r.code, r.stdout, r.stderr)
            })?;
            let rep = r.report.ok_or("no JSON report")?;
            ensure(
                rep["outcome"] == outcome && rep["exit_code"] == code,
                || format!("report says {} / {}", rep["outcome"], rep["exit_code"]),
            )
        })
    };
    vec![
        case(
            "exit_code::0_memtouch_ok",
            &["run", "--mem", "8M", "--policy", "mlock-drain"],
            0,
            "completed",
        ),
        case(
            "exit_code::4_guest_crash",
            &["run", "--mem", "4M", "--guest", "crash"],
            4,
            "guest-failed",
        ),
        case(
            "exit_code::5_pin_failure",
            &["run", "--mem", "8M", "--inject-pin-failure", "20:EFAULT"],
            5,
            "terminated",
        ),
        case(
            "exit_code::6_timeout",
            &["run", "--mem", "4M", "--guest", "spin", "--timeout", "0.5"],
            6,
            "timeout",
        ),
        kvm_test("report::terminated_json_names_errno_and_gpa", || {
            let r = pinvmm(&[
                "run",
                "--mem",
                "8M",
                "--inject-pin-failure",
                "7:ENOMEM",
                "--backing",
                "anon",
            ])?;
            let rep = r.report.ok_or("no JSON report")?;
            let t = &rep["termination"];
            ensure(
                t["errno_name"] == "ENOMEM" && t["gpa"].is_u64() && t["pins_ok_before"] == 6,
                || format!("{t}"),
            )?;
            ensure(
                r.stdout.contains("TERMINATED") && r.stdout.contains("ENOMEM"),
                || r.stdout.clone(),
            )
        }),
        kvm_test("report::json_has_the_documented_fields", || {
            let r = pinvmm(&["run", "--mem", "8M", "--policy", "lru-add-drain"])?;
            let rep = r.report.ok_or("no JSON report")?;
            for k in [
                "outcome",
                "config",
                "host",
                "vcpus",
                "resolver",
                "vmstat_delta",
                "memory",
                "timing",
            ] {
                ensure(!rep[k].is_null(), || format!("missing {k}"))?;
            }
            let res = &rep["resolver"];
            for k in [
                "pins",
                "pin_latency",
                "fault_latency",
                "drain",
                "fault_cpu",
                "pin_cpu",
            ] {
                ensure(!res[k].is_null(), || format!("missing resolver.{k}"))?;
            }
            ensure(rep["vmstat_delta"].get("pgmigrate_fail").is_some(), || {
                "vmstat_delta lacks pgmigrate_fail".into()
            })?;
            ensure(res["drain"]["all_drains"].as_u64() > Some(0), || {
                format!("{}", res["drain"])
            })
        }),
        kvm_test("probe::reports_host_and_movable_memory", || {
            let r = pinvmm(&["probe"])?;
            ensure(
                r.code == 0 && r.stdout.contains("verdict: pinvmm can run VMs here"),
                || r.stdout.clone(),
            )?;
            let no_movable = r.stdout.contains("0 MiB ZONE_MOVABLE, 0 MiB CMA");
            ensure(
                !no_movable || r.stdout.contains("pin failures cannot occur naturally"),
                || r.stdout.clone(),
            )
        }),
    ]
}

fn gup_check() -> Vec<Trial> {
    vec![
        plain_test("gup_check::skips_loudly_without_movable_memory", || {
            let r = pinvmm(&["gup-check", "--pages", "64", "--rounds", "1"])?;
            ensure(
                r.stdout.starts_with("KTAP version 1\n")
                    && r.stdout.contains("\n1..3\n")
                    && r.stdout.contains("\n# Totals: pass:"),
                || r.stdout.clone(),
            )?;
            let movable = !r.stdout.contains("ZONE_MOVABLE 0 MiB, CMA 0 MiB");
            // kselftest: everything skipped is exit 4, not a pass.
            ensure(
                movable
                    || (r.code == 4
                        && r.stdout.matches("# SKIP no ZONE_MOVABLE").count() == 3
                        && r.stdout.contains("skip:3")),
                || format!("exit {}: {}", r.code, r.stdout),
            )
        }),
        plain_test(
            "gup_check::forced_cases_that_migrate_nothing_are_skipped",
            || {
                let r = pinvmm(&["gup-check", "--pages", "256", "--rounds", "1", "--force"])?;
                ensure(r.stdout.contains("0 of 256 pins failed"), || {
                    r.stdout.clone()
                })?;
                // Without movable memory the pins succeed but migrate nothing: that is no `ok`.
                let movable = !r.stdout.contains("ZONE_MOVABLE 0 MiB, CMA 0 MiB");
                ensure(
                    movable
                        || (r.code == 4
                            && r.stdout.matches("\nok ").count() == 3
                            && r.stdout.matches("did not test migration").count() == 3),
                    || format!("exit {}: {}", r.code, r.stdout),
                )
            },
        ),
    ]
}

fn help() -> Trial {
    plain_test(
        "help::teaches_policies_and_exit_codes",
        || -> Result<(), Failed> {
            let r = pinvmm(&["run", "--help"])?;
            ensure(r.code == 0, || format!("exit {}", r.code))?;
            for needle in [
                "mlock-drain",
                "lru-add-drain",
                "--inject-pin-failure",
                "--kernel",
                "pinvmm-result",
                "Exit codes",
                "5  VM terminated",
            ] {
                ensure(r.stdout.contains(needle), || {
                    format!("--help lacks {needle:?}")
                })?;
            }
            Ok(())
        },
    )
}

/// `pinvmm bench`, scaled down: every section runs and the JSON has its rows and goals.
fn bench() -> Trial {
    kvm_test("bench::small_run_reports_every_section", || {
        let r = pinvmm(&[
            "bench",
            "--reps",
            "1",
            "--mem",
            "4M",
            "--launch-mem",
            "4M",
            "--rss-mem",
            "8M",
            "--launches",
            "2",
            "--fault-ahead",
            "7",
            "--load",
            "1",
            "--jobs",
            "2",
            "--jobs-runs",
            "1",
            "--jobs-mem",
            "4M",
            "--json",
            "-",
        ])?;
        ensure(r.code == 0, || format!("exit {}: {}", r.code, r.stderr))?;
        let v: serde_json::Value =
            serde_json::from_str(&r.stdout).map_err(|e| format!("bench JSON: {e}"))?;
        let touch = v["touch"].as_array().ok_or("no touch rows")?;
        // 11 rows at 4 KiB and 6 of them again under load; 7 hugetlb and 4 shmem-thp rows at
        // 2 MiB unless skipped (not root and the host not set up: then `skipped` says why).
        let skipped = v["skipped"].as_array().map_or(0, Vec::len);
        let want = 11 + 6 + if skipped == 0 { 11 } else { 0 };
        ensure(
            touch.len() >= 17 && (skipped > 0 || touch.len() == want),
            || {
                format!(
                    "{} touch rows, {skipped} skipped: {}",
                    touch.len(),
                    v["skipped"]
                )
            },
        )?;
        if skipped == 0 {
            let h = touch
                .iter()
                .find(|t| t["name"] == "hugetlb:pin:none")
                .ok_or("no hugetlb:pin:none row")?;
            ensure(h["granule_bytes"] == 2 << 20, || format!("{h}"))?;
        }
        for t in touch {
            ensure(t["us_per_page"].as_f64().is_some_and(|x| x > 0.0), || {
                format!("{t}")
            })?;
        }
        let fa = touch
            .iter()
            .find(|t| t["name"] == "pin:none,fa=7")
            .ok_or("no fault-ahead row")?;
        ensure(
            fa["pins_per_fault"].as_f64().is_some_and(|x| x > 1.5),
            || format!("fault-ahead pinned no pages ahead: {fa}"),
        )?;
        let loaded = touch.iter().filter(|t| t["load"] == 1).count();
        ensure(loaded == 6, || format!("{loaded} loaded rows, want 6"))?;
        let j = &v["jobs"];
        ensure(
            j["jobs"] == 2 && j["speedup"].as_f64().is_some_and(|x| x > 0.0),
            || format!("jobs section: {j}"),
        )?;
        for k in ["drain_micro", "launch", "rss", "goals"] {
            ensure(v[k].as_array().is_some_and(|a| !a.is_empty()), || {
                format!("empty {k}")
            })?;
        }
        // QEMU: measured (rows of both VMMs) or loudly not.
        let q = &v["qemu"];
        ensure(
            q["not_measured"].is_string()
                || q["rows"].as_array().is_some_and(|rows| {
                    rows.iter().any(|r| r["vmm"] == "qemu")
                        && rows.iter().any(|r| r["vmm"] == "pinvmm")
                }),
            || format!("qemu section: {q}"),
        )?;
        ensure(r.stderr.contains("| goal | target |"), || r.stderr.clone())
    })
}

/// `pinvmm bench --only qemu` with no QEMU: exit 3 and the package to install, at once.
fn bench_without_qemu() -> Trial {
    plain_test("bench::missing_qemu_is_exit_3_and_named", || {
        let r = pinvmm(&[
            "bench",
            "--only",
            "qemu",
            "--qemu",
            "/nonexistent/qemu-system-x86_64",
        ])?;
        let text = format!("{}{}", r.stdout, r.stderr);
        ensure(r.code == 3 && text.contains("QEMU NOT MEASURED"), || {
            format!("exit {}: {text}", r.code)
        })?;
        let arch_ok = text.contains("qemu-check --arch amd64 --setup") || text.contains("x86_64");
        ensure(arch_ok, || text)
    })
}

/// `pinvmm run` filters every thread by default and reports it (`config.seccomp`, and each
/// vCPU's `seccomp`); `--no-seccomp` turns it off; either way the VM completes (the filters
/// allow everything a run needs).
fn seccomp() -> Trial {
    kvm_test("seccomp::default_all_and_no_seccomp_off", || {
        for (extra, want) in [(None, "all"), (Some("--no-seccomp"), "off")] {
            let mut args = vec!["run", "--mem", "8M", "--policy", "lru-add-drain"];
            args.extend(extra);
            let r = pinvmm(&args)?;
            let rep = r.report.ok_or("no JSON report")?;
            ensure(r.code == 0 && rep["outcome"] == "completed", || {
                format!("{args:?}: exit {}: {}{}", r.code, r.stdout, r.stderr)
            })?;
            ensure(rep["config"]["seccomp"] == want, || {
                format!("{args:?}: config.seccomp = {}", rep["config"]["seccomp"])
            })?;
            // Each vCPU says whether its thread really ran under its filter.
            let filtered = want == "all";
            ensure(
                rep["vcpus"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty() && v.iter().all(|v| v["seccomp"] == filtered)),
                || {
                    format!(
                        "{args:?}: vcpus[].seccomp should be {filtered}: {}",
                        rep["vcpus"]
                    )
                },
            )?;
        }
        Ok(())
    })
}

/// A config file sets the options, the command line overrides them, and `--print-config`
/// writes a file that reads back to itself.
fn config_file() -> Trial {
    plain_test(
        "config::file_then_command_line_and_print_round_trip",
        || {
            let dir = std::env::temp_dir().join(format!("pinvmm-cli-good-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let file = dir.join("run.json");
            let text = r#"{"mem": "8M", "policy": "mlock-drain", "vcpus": 2, "inject": ["drain@5"], "quiet": true, "fault_ahead": 3}"#;
            std::fs::write(&file, text).map_err(|e| format!("{e}"))?;
            let path = file.to_str().ok_or("temp path")?;
            // `--json -` explicitly: pinvmm() would add a fresh report path to every `run`.
            let r = pinvmm(&[
                "run",
                "--config",
                path,
                "--policy",
                "retry",
                "--json",
                "-",
                "--print-config",
            ])?;
            ensure(r.code == 0, || format!("exit {}: {}", r.code, r.stderr))?;
            let v: serde_json::Value =
                serde_json::from_str(&r.stdout).map_err(|e| format!("{e}: {}", r.stdout))?;
            ensure(
                v["mem"] == 8 << 20
                    && v["policy"] == "retry"
                    && v["vcpus"] == 2
                    && v["fault-ahead"] == 3
                    && v["quiet"] == true
                    && v["inject"] == serde_json::json!(["drain@5:EINVAL"]),
                || format!("merged config: {v}"),
            )?;
            let printed = dir.join("printed.json");
            std::fs::write(&printed, &r.stdout).map_err(|e| format!("{e}"))?;
            let again = pinvmm(&[
                "run",
                "--config",
                printed.to_str().ok_or("temp path")?,
                "--json",
                "-",
                "--print-config",
            ])?;
            let _ = std::fs::remove_dir_all(&dir);
            ensure(again.code == 0 && again.stdout == r.stdout, || {
                format!("round trip differs:\n{}\n{}", r.stdout, again.stdout)
            })
        },
    )
}

fn main() {
    let args = Arguments::from_args();
    common::announce();
    let mut t = vec![
        bad_inputs(),
        not_applicable(),
        bad_linux_inputs(),
        config_file(),
        help(),
        bench(),
        bench_without_qemu(),
        seccomp(),
    ];
    t.extend(gup_check());
    t.extend(exit_codes());
    common::run_and_count("cli", &args, t)
}
