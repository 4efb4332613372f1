// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `qemu` section of `pinvmm bench`: `qemu-system-x86_64 -accel kvm` and pinvmm, each
//! one process per VM, on the same bare work — touch every 4 KiB page of guest RAM from 1 MiB
//! to the end once, then read it all back.
//!
//! QEMU runs guest/src/qemu_rom.rs as its BIOS (`-M microvm -bios`): it writes `A` on COM1 as
//! its first instruction, `B` once at CPL3, `C` when every page was touched, `D` when all
//! read back right, then exits through `isa-debug-exit`. The bench reads COM1 through a pipe
//! and timestamps every byte: spawn → `A` is the launch to the first guest instruction, `B` →
//! `C` the first touch. pinvmm is timed the same way where it can be (`hello` with
//! `--console`: spawn → the first console byte) and by its own report for the first touch
//! (memtouch's MARK 1 → MARK 2, host timestamps at the PIO exits). Exit is spawn → waitpid
//! for both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use vmm::stats::median;

/// How long one VM process may take before it is killed and the section fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Turns of the 2-instruction real-mode loop of the extra run that times real mode.
const REAL_MODE_LOOPS: u32 = 200_000;

/// One VM variant of the section.
#[derive(Debug, Clone, Serialize)]
pub struct QemuRow {
    /// `qemu` or `pinvmm`.
    pub vmm: &'static str,
    pub name: String,
    /// Guest RAM backing as the VMM was told (QEMU: default anonymous RAM, memfd, hugetlb).
    pub memory: String,
    pub runs: usize,
    /// Spawn to the first byte the guest wrote (its first instruction, for the QEMU image).
    pub first_output_ms_p50: Option<f64>,
    /// QEMU: the reset vector to CPL3 (page tables, GDT, protected and long mode; emulated
    /// on PVM).
    pub to_cpl3_ms_p50: Option<f64>,
    /// Spawn to the process's exit.
    pub exit_ms_p50: f64,
    pub exit_ms_min: f64,
    pub exit_ms_max: f64,
    /// Back to back, one process at a time: runs / their total wall time.
    pub vms_per_s: f64,
    /// Every data page's first touch, µs per 4 KiB page (QEMU: the guest's TSC interval
    /// from `B` to `C`, at the host's TSC rate; pinvmm: memtouch's MARK 1 to MARK 2).
    pub first_touch_us_per_page: Option<f64>,
    /// QEMU: the same interval from the arrival times of `B` and `C` on the host (a check of
    /// the TSC figure; late on a busy host, when the pipe's reader is not run at once).
    pub first_touch_host_us_per_page: Option<f64>,
    pub first_touch_min: Option<f64>,
    pub first_touch_max: Option<f64>,
    pub gib_per_s: Option<f64>,
    /// The first touch over the pinvmm `--stage2 kernel` row of the same kind of memory.
    pub ratio_to_pinvmm_kernel: Option<f64>,
    /// One command line of this row, as run.
    pub command: String,
}

/// What the section measured, or why it could not.
#[derive(Debug, Clone, Serialize)]
pub struct QemuSection {
    pub qemu: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub version: Option<String>,
    /// Why nothing was measured (QEMU missing, not x86_64), loud in every output.
    pub not_measured: Option<String>,
    pub mem_bytes: u64,
    pub pages: u64,
    pub rows: Vec<QemuRow>,
    /// The host's THP settings while QEMU ran (its default RAM asks for MADV_HUGEPAGE).
    pub thp_enabled: String,
    pub shmem_thp_mode: String,
    /// The host's TSC rate the guest's TSC intervals were converted with (KVM runs the
    /// guest's TSC at the host's rate unless told to scale it; QEMU is not told here).
    pub tsc_mhz: Option<f64>,
    /// One more QEMU run whose image first turns a `dec ecx; jnz` loop `real_mode_loops`
    /// times in real mode: µs per real-mode instruction (PVM emulates them).
    pub real_mode_loops: u32,
    pub real_mode_us_per_instruction: Option<f64>,
}

impl QemuSection {
    /// The section's table (or why there is none), for `BenchReport::human`.
    pub fn human(&self, w: &mut String) {
        use std::fmt::Write as _;
        if let Some(why) = &self.not_measured {
            let _ = writeln!(w, "**QEMU NOT MEASURED**: {why}\n");
            return;
        }
        let _ = writeln!(
            w,
            "QEMU and pinvmm on the same bare work, one process per VM: {} MiB guest, every 4 KiB page from 1 MiB touched once ({} pages), median of {} interleaved runs; {}; THP enabled: {}, shmem_enabled: {}\n",
            self.mem_bytes >> 20,
            self.pages,
            self.rows.first().map_or(0, |r| r.runs),
            self.version.as_deref().unwrap_or("?"),
            self.thp_enabled,
            self.shmem_thp_mode
        );
        let _ = writeln!(
            w,
            "| VM | memory | first guest output ms | reset to CPL3 ms | exit ms | min–max | VMs/s | first touch µs/page | min–max | GiB/s | × pinvmm kernel, same memory |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
        let o = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
        let u = |v: Option<f64>| v.map_or("-".into(), super::common::us);
        for r in &self.rows {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.1} | {:.1}–{:.1} | {:.1} | {} | {}–{} | {} | {} |",
                r.name,
                r.memory,
                o(r.first_output_ms_p50, 1),
                o(r.to_cpl3_ms_p50, 2),
                r.exit_ms_p50,
                r.exit_ms_min,
                r.exit_ms_max,
                r.vms_per_s,
                u(r.first_touch_us_per_page),
                u(r.first_touch_min),
                u(r.first_touch_max),
                o(r.gib_per_s, 3),
                r.ratio_to_pinvmm_kernel
                    .map_or("-".into(), |x| format!("{x:.2}x"))
            );
        }
        if let Some(q) = self.rows.iter().find(|r| r.vmm == "qemu") {
            let _ = writeln!(w, "\nQEMU command (first row): `{}`", q.command);
        }
        if let Some(us) = self.real_mode_us_per_instruction {
            let _ = writeln!(
                w,
                "\nReal mode in QEMU's guest: {us:.2} µs per instruction ({} turns of `dec ecx; jnz` right after reset, timed by the guest's TSC).",
                self.real_mode_loops
            );
        }
        let _ = writeln!(w);
    }
}

/// One variant: how to start it and how to read its timings.
struct Variant {
    vmm: &'static str,
    name: String,
    memory: String,
    cmd: Vec<String>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The QEMU image: COM1 marks on stdout.
    QemuRom,
    /// pinvmm hello: its console echoed on stderr.
    PinvmmHello,
    /// pinvmm memtouch: its JSON report on stdout.
    PinvmmMemtouch,
}

/// One run's figures.
#[derive(Default)]
struct Sample {
    first_output_ms: Option<f64>,
    to_cpl3_ms: Option<f64>,
    exit_ms: f64,
    /// Whole first pass, µs (per page later).
    first_touch_us: Option<f64>,
    first_touch_host_us: Option<f64>,
    /// The image's real-mode loop, µs.
    real_mode_us: Option<f64>,
}

/// The host's TSC rate, measured against the monotonic clock over 50 ms.
#[cfg(target_arch = "x86_64")]
pub fn tsc_hz() -> Option<f64> {
    // SAFETY: rdtsc reads a counter; it has no memory effects.
    let read = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), read());
    std::thread::sleep(Duration::from_millis(50));
    let (c1, t1) = (read(), Instant::now());
    Some((c1.wrapping_sub(c0)) as f64 / t1.duration_since(t0).as_secs_f64())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn tsc_hz() -> Option<f64> {
    None
}

/// The three TSC intervals after `T` (16 hex digits each): reset to CPL3, first touch, the
/// real-mode loop.
fn tsc_intervals(com1: &[u8]) -> Option<[u64; 3]> {
    let at = com1.iter().position(|&b| b == guest::qemu_rom::MARK_TSC)?;
    let hex = std::str::from_utf8(com1.get(at + 1..at + 49)?).ok()?;
    let n = |i: usize| u64::from_str_radix(&hex[16 * i..16 * (i + 1)], 16).ok();
    Some([n(0)?, n(1)?, n(2)?])
}

/// The section's inputs.
#[derive(Debug)]
pub struct QemuArgs<'a> {
    pub qemu: &'a Path,
    pub pinvmm: &'a Path,
    pub mem: u64,
    pub reps: u32,
    /// The hugetlb rows need `mem / 2 MiB` free hugetlb pages (the bench reserves them).
    pub hugetlb: bool,
    pub dir: &'a Path,
}

/// `--version` of the QEMU binary, or why it cannot run.
pub fn qemu_version(qemu: &Path) -> Result<String, String> {
    match Command::new(qemu).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()),
        Ok(o) => Err(format!(
            "{} --version failed ({}): {}",
            qemu.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} not found: install QEMU 10 the way the boards do (as root, in pinvmm's tree: guest/linux/qemu-check --arch amd64 --setup, which takes all of QEMU from bookworm-backports; a plain apt-get install qemu-system-x86 would take bookworm's 7.2, which apt refuses next to the board's 10.0) or pass --qemu PATH",
            qemu.display()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", qemu.display())),
    }
}

fn thp_setting(file: &str) -> String {
    std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A section that measured nothing, and why.
pub fn not_measured(qemu: &Path, mem: u64, why: String) -> QemuSection {
    QemuSection {
        qemu: qemu.display().to_string(),
        version: None,
        not_measured: Some(why),
        mem_bytes: mem,
        pages: 0,
        rows: Vec::new(),
        thp_enabled: thp_setting("enabled"),
        shmem_thp_mode: thp_setting("shmem_enabled"),
        tsc_mhz: None,
        real_mode_loops: 0,
        real_mode_us_per_instruction: None,
    }
}

fn variants(a: &QemuArgs, rom: &Path) -> Vec<Variant> {
    let mib = a.mem >> 20;
    let qemu = |memory: &str, backend: Option<&str>| {
        let mut machine = "microvm,x-option-roms=off,rtc=off".to_owned();
        let mut cmd: Vec<String> = vec![a.qemu.display().to_string()];
        cmd.extend(
            [
                "-accel",
                "kvm",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "stdio",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=1",
                "-m",
            ]
            .map(String::from),
        );
        cmd.push(format!("{mib}M"));
        cmd.push("-bios".into());
        cmd.push(rom.display().to_string());
        if let Some(b) = backend {
            cmd.push("-object".into());
            cmd.push(format!("{b},id=ram0,size={mib}M"));
            machine.push_str(",memory-backend=ram0");
        }
        cmd.push("-M".into());
        cmd.push(machine);
        Variant {
            vmm: "qemu",
            name: "qemu -M microvm".into(),
            memory: memory.into(),
            cmd,
            kind: Kind::QemuRom,
        }
    };
    let pinvmm = |name: &str, memory: &str, args: &[&str], kind| {
        let mut cmd = vec![a.pinvmm.display().to_string(), "run".into()];
        cmd.extend(args.iter().map(|s| s.to_string()));
        Variant {
            vmm: "pinvmm",
            name: name.into(),
            memory: memory.into(),
            cmd,
            kind,
        }
    };
    let mem_arg = format!("{mib}M");
    let touch = |stage2: &str, backing: &str| {
        [
            "--quiet",
            "--guest",
            "memtouch",
            "--json",
            "-",
            "--mem",
            &mem_arg,
            "--stage2",
            stage2,
            "--backing",
            backing,
        ]
        .map(String::from)
    };
    let mut v = vec![
        qemu("anonymous RAM (QEMU's default: MADV_HUGEPAGE)", None),
        qemu("memfd (shmem)", Some("memory-backend-memfd")),
    ];
    if a.hugetlb {
        v.push(qemu(
            "memfd hugetlb 2 MiB",
            Some("memory-backend-memfd,hugetlb=on,hugetlbsize=2M"),
        ));
    }
    v.push(pinvmm(
        "pinvmm run --guest hello (launch only)",
        "memfd (shmem)",
        &["--quiet", "--console", "--guest", "hello", "--mem", "16M"],
        Kind::PinvmmHello,
    ));
    let mut memtouch = vec![("kernel", "shmem"), ("pin", "shmem")];
    if a.hugetlb {
        memtouch.extend([("kernel", "hugetlb"), ("pin", "hugetlb")]);
    }
    for (stage2, backing) in memtouch {
        let args = touch(stage2, backing);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let memory = if backing == "shmem" {
            "memfd (shmem)"
        } else {
            "memfd hugetlb 2 MiB"
        };
        v.push(pinvmm(
            &format!("pinvmm run --stage2 {stage2} --backing {backing}"),
            memory,
            &args,
            Kind::PinvmmMemtouch,
        ));
    }
    v
}

/// Runs one VM process, timestamping every byte of its stdout (QEMU) or stderr (pinvmm's
/// console).
fn run_once(v: &Variant, tsc_hz: Option<f64>) -> Result<(Sample, Vec<u8>), String> {
    let what = &v.name;
    let t0 = Instant::now();
    let mut child = Command::new(&v.cmd[0])
        .args(&v.cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start {}: {e}", v.cmd[0]))?;
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let marked = if v.kind == Kind::PinvmmHello { 0 } else { 1 };
    // One reader per pipe; the marked one sends each byte with its arrival time.
    let (tx, rx) = mpsc::channel::<(u8, Instant)>();
    let mut plain = Vec::new();
    let pipes: [&mut (dyn std::io::Read + Send); 2] = [&mut err, &mut out];
    let collected = std::thread::scope(|sc| {
        let mut handles = Vec::new();
        for (i, pipe) in pipes.into_iter().enumerate() {
            let tx = (i == marked).then(|| tx.clone());
            handles.push(sc.spawn(move || {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let t = Instant::now();
                    if let Some(tx) = &tx {
                        for &b in &buf[..n] {
                            let _ = tx.send((b, t));
                        }
                    }
                    all.extend_from_slice(&buf[..n]);
                }
                all
            }));
        }
        drop(tx);
        let deadline = t0 + RUN_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("{what}: no exit within {RUN_TIMEOUT:?}, killed"));
                }
                Ok(None) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => break Err(format!("{what}: waitpid: {e}")),
            }
        };
        let exit = t0.elapsed();
        let outs: Vec<Vec<u8>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        status.map(|s| (s, exit, outs))
    })?;
    let (status, exit, outs) = collected;
    let marks: Vec<(u8, Instant)> = rx.try_iter().collect();
    plain.extend_from_slice(&outs[1 - marked]);
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let at = |m: u8| marks.iter().find(|(b, _)| *b == m).map(|(_, t)| *t);
    let mut s = Sample {
        exit_ms: exit.as_secs_f64() * 1e3,
        first_output_ms: marks.first().map(|(_, t)| ms(*t)),
        ..Default::default()
    };
    let stderr_tail = || {
        String::from_utf8_lossy(&outs[0])
            .trim()
            .chars()
            .take(400)
            .collect::<String>()
    };
    match v.kind {
        Kind::QemuRom => {
            use guest::qemu_rom::{EXIT_OK, MARK_FIRST, MARK_OK, MARK_USER, MARK_WRITTEN};
            if status.code() != Some(EXIT_OK) || at(MARK_OK).is_none() {
                let got: String = marks.iter().map(|(b, _)| *b as char).take(40).collect();
                return Err(format!(
                    "{what}: guest did not finish right ({status}, COM1 {got:?}): {}",
                    String::from_utf8_lossy(&plain)
                        .trim()
                        .chars()
                        .take(400)
                        .collect::<String>()
                ));
            }
            if let (Some(a), Some(b), Some(c)) = (at(MARK_FIRST), at(MARK_USER), at(MARK_WRITTEN)) {
                s.first_output_ms = Some(ms(a));
                s.first_touch_host_us = Some(c.saturating_duration_since(b).as_secs_f64() * 1e6);
            }
            let com1: Vec<u8> = marks.iter().map(|(b, _)| *b).collect();
            let [to_user, touch, real_mode] =
                tsc_intervals(&com1).ok_or_else(|| format!("{what}: no TSC intervals on COM1"))?;
            if let Some(hz) = tsc_hz {
                s.to_cpl3_ms = Some(to_user as f64 / hz * 1e3);
                s.first_touch_us = Some(touch as f64 / hz * 1e6);
                s.real_mode_us = Some(real_mode as f64 / hz * 1e6);
            }
        }
        Kind::PinvmmHello => {
            if !status.success() {
                return Err(format!("{what}: {status}: {}", stderr_tail()));
            }
        }
        Kind::PinvmmMemtouch => {
            if !status.success() {
                return Err(format!("{what}: {status}: {}", stderr_tail()));
            }
            let r: serde_json::Value = serde_json::from_slice(&outs[1])
                .map_err(|e| format!("{what}: bad JSON report: {e}"))?;
            // Per page already: made per page below for QEMU only.
            s.first_touch_us = r["timing"]["first_touch_us_per_page"].as_f64();
            s.first_output_ms = None;
        }
    }
    Ok((s, plain))
}

/// Removes the image file, and its directory when that is empty, however the section ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Runs every variant `reps` times, interleaved round by round.
pub fn run(a: &QemuArgs, log: &dyn Fn(&str)) -> Result<QemuSection, String> {
    let version = qemu_version(a.qemu)?;
    let data_start = 1u64 << 20;
    let rom = guest::qemu_rom::image(data_start, a.mem, 0).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let rom_path: PathBuf = a.dir.join(format!("pinvmm-qemu-rom-{}M.bin", a.mem >> 20));
    let _cleanup = RemoveOnDrop(rom_path.clone());
    std::fs::write(&rom_path, &rom).map_err(|e| format!("{}: {e}", rom_path.display()))?;
    let pages = (a.mem - data_start) / vmm::sys::PAGE_SIZE as u64;
    let vs = variants(a, &rom_path);
    let tsc = tsc_hz();
    let mut samples: Vec<Vec<Sample>> = (0..vs.len()).map(|_| Vec::new()).collect();
    for round in 0..a.reps {
        for k in 0..vs.len() {
            let i = (k + round as usize) % vs.len();
            let (mut s, _) = run_once(&vs[i], tsc)?;
            if vs[i].kind == Kind::QemuRom {
                // B -> C covered every page: per page.
                s.first_touch_us = s.first_touch_us.map(|us| us / pages as f64);
                s.first_touch_host_us = s.first_touch_host_us.map(|us| us / pages as f64);
            }
            samples[i].push(s);
        }
        log(&format!("qemu: round {}/{} done", round + 1, a.reps));
    }
    // Real mode, timed once: the same image with the loop, QEMU's default RAM.
    let loop_rom =
        guest::qemu_rom::image(data_start, a.mem, REAL_MODE_LOOPS).map_err(|e| e.to_string())?;
    std::fs::write(&rom_path, &loop_rom).map_err(|e| format!("{}: {e}", rom_path.display()))?;
    let (real, _) = run_once(&vs[0], tsc)?;
    let real_mode_us_per_instruction = real
        .real_mode_us
        .map(|us| us / (2.0 * f64::from(REAL_MODE_LOOPS)));
    log("qemu: real mode timed");
    let mut rows: Vec<QemuRow> = vs
        .iter()
        .zip(&samples)
        .map(|(v, s)| {
            let opt_med = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let x: Vec<f64> = s.iter().filter_map(f).collect();
                (!x.is_empty()).then(|| median(&x))
            };
            let exits: Vec<f64> = s.iter().map(|x| x.exit_ms).collect();
            let touch: Vec<f64> = s.iter().filter_map(|x| x.first_touch_us).collect();
            let ft = opt_med(&|x| x.first_touch_us);
            QemuRow {
                vmm: v.vmm,
                name: v.name.clone(),
                memory: v.memory.clone(),
                runs: s.len(),
                first_output_ms_p50: opt_med(&|x| x.first_output_ms),
                to_cpl3_ms_p50: opt_med(&|x| x.to_cpl3_ms),
                exit_ms_p50: median(&exits),
                exit_ms_min: exits.iter().copied().fold(f64::INFINITY, f64::min),
                exit_ms_max: exits.iter().copied().fold(0.0, f64::max),
                vms_per_s: s.len() as f64 / (exits.iter().sum::<f64>() / 1e3),
                first_touch_us_per_page: ft,
                first_touch_host_us_per_page: opt_med(&|x| x.first_touch_host_us),
                first_touch_min: (!touch.is_empty())
                    .then(|| touch.iter().copied().fold(f64::INFINITY, f64::min)),
                first_touch_max: (!touch.is_empty())
                    .then(|| touch.iter().copied().fold(0.0, f64::max)),
                gib_per_s: ft.map(|us| vmm::sys::PAGE_SIZE as f64 / us / 1e3 / 1.073_741_824),
                ratio_to_pinvmm_kernel: None,
                command: v.cmd.join(" "),
            }
        })
        .collect();
    // Each row's first touch over pinvmm --stage2 kernel on the same kind of memory (QEMU's
    // default anonymous RAM, with THP, has no pinvmm counterpart).
    let kernel_of = |memory: &str| {
        let want = if memory.contains("hugetlb") {
            "--stage2 kernel --backing hugetlb"
        } else if memory.contains("shmem") {
            "--stage2 kernel --backing shmem"
        } else {
            return None;
        };
        rows.iter()
            .find(|r| r.name.ends_with(want))
            .and_then(|r| r.first_touch_us_per_page)
    };
    let ratios: Vec<Option<f64>> = rows
        .iter()
        .map(|r| Some(r.first_touch_us_per_page? / kernel_of(&r.memory)?))
        .collect();
    for (r, x) in rows.iter_mut().zip(ratios) {
        r.ratio_to_pinvmm_kernel = x;
    }
    Ok(QemuSection {
        qemu: a.qemu.display().to_string(),
        version: Some(version),
        not_measured: None,
        mem_bytes: a.mem,
        pages,
        rows,
        thp_enabled: thp_setting("enabled"),
        shmem_thp_mode: thp_setting("shmem_enabled"),
        tsc_mhz: tsc.map(|hz| hz / 1e6),
        real_mode_loops: REAL_MODE_LOOPS,
        real_mode_us_per_instruction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_intervals_parse_after_t() {
        let com1 = b"ABCDT00000000000003e8000000000000ffff0000000000000010\n";
        assert_eq!(tsc_intervals(com1), Some([1000, 0xffff, 16]));
        assert_eq!(tsc_intervals(b"ABCDT12"), None);
    }

    #[test]
    fn a_missing_qemu_is_named_with_the_setup_command() {
        let e = qemu_version(Path::new("/nonexistent/qemu-system-x86_64")).unwrap_err();
        assert!(
            e.contains("guest/linux/qemu-check --arch amd64 --setup"),
            "{e}"
        );
    }

    #[test]
    fn variants_cover_both_vmms_and_the_same_memory() {
        let a = QemuArgs {
            qemu: Path::new("qemu-system-x86_64"),
            pinvmm: Path::new("pinvmm"),
            mem: 32 << 20,
            reps: 1,
            hugetlb: true,
            dir: Path::new("/tmp"),
        };
        let v = variants(&a, Path::new("/tmp/rom.bin"));
        assert_eq!(v.iter().filter(|v| v.vmm == "qemu").count(), 3);
        assert_eq!(v.iter().filter(|v| v.vmm == "pinvmm").count(), 5);
        let q = &v[0].cmd.join(" ");
        assert!(
            q.contains("-m 32M") && q.contains("-bios /tmp/rom.bin"),
            "{q}"
        );
        let h = &v[2].cmd.join(" ");
        assert!(
            h.contains("hugetlb=on") && h.contains("memory-backend=ram0"),
            "{h}"
        );
        assert!(
            v.iter()
                .any(|v| v.cmd.join(" ").contains("--backing hugetlb"))
        );
    }
}
