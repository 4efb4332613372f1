// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Linux guests, whatever the architecture: the user's kernel, initrd and command line, the
//! checks that turn a wrong file into one clear message before anything boots, and the verdict
//! read from the guest's console.
//!
//! The arch loaders (`arch::load_linux`) place the files and write the boot structures; this
//! module opens the files (naming them in every error), checks the initrd's format, builds the
//! command line (`arch::LINUX_CMDLINE_BASE` + `--cmdline`), and afterwards judges the run by
//! the guest workload's one result line (`guest::workload`): the host recomputes the checksum
//! from the line's fill size and seed instead of trusting the guest's "ok".

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use devices::{ConsoleSink, WatchedLine};
use guest::workload::{FillSize, Params, RESULT_MARKER, ResultLine, expected_checksum};
use linux_loader::cmdline::Cmdline;
use serde::Serialize;

use crate::arch::{self, BootFile, LinuxBoot, LinuxLoadError};
use crate::control::VcpuOutcome;
use crate::memory::GuestMemory;

/// Longest kernel command line, with its NUL (COMMAND_LINE_SIZE on arm64 and x86).
pub const CMDLINE_MAX: usize = 2048;

/// The marker the watched console lines carry.
pub const MARKER: &str = RESULT_MARKER;

/// What the user asked to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinuxConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The user's part of the command line (`--cmdline`).
    pub cmdline: String,
}

/// Why a Linux guest could not be set up. All but `Setup` are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("{file} {path}: cannot open: {err}")]
    Open {
        file: BootFile,
        path: PathBuf,
        err: io::Error,
    },
    #[error("{file} {path}: not a regular file")]
    NotAFile { file: BootFile, path: PathBuf },
    #[error("{file} {path}: the file is empty")]
    Empty { file: BootFile, path: PathBuf },
    #[error("{file} {path}: {err}")]
    Load {
        file: BootFile,
        path: PathBuf,
        err: LinuxLoadError,
    },
    #[error("{0}")]
    Cmdline(String),
    #[error("--cmdline: {0} (the guest workload would stop on it; see guest/linux/build --help)")]
    Workload(guest::workload::WorkloadError),
    #[error("cannot set up the Linux guest: {0}")]
    Setup(LinuxLoadError),
}

impl LinuxError {
    /// Whether the user's input is at fault (exit 2) rather than the host.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, LinuxError::Setup(_))
    }
}

/// The complete command line: the arch's console arguments, then the user's (later words win
/// in the kernel's own parsing, so the user can override them).
pub fn full_cmdline(user: &str) -> Result<String, LinuxError> {
    let text = format!("{} {}", arch::LINUX_CMDLINE_BASE, user.trim());
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    c.insert_str(text.trim()).map_err(|e| {
        LinuxError::Cmdline(format!(
            "--cmdline: {e} (at most {} bytes of printable ASCII in all, with pinvmm's \"{}\")",
            CMDLINE_MAX - 1,
            arch::LINUX_CMDLINE_BASE
        ))
    })?;
    c.as_cstring()
        .map_err(|e| LinuxError::Cmdline(format!("--cmdline: {e}")))
        .map(|s| s.to_string_lossy().into_owned())
}

/// Opens a boot file, refusing directories and empty files.
fn open(file: BootFile, path: &Path) -> Result<File, LinuxError> {
    let f = File::open(path).map_err(|err| LinuxError::Open {
        file,
        path: path.to_owned(),
        err,
    })?;
    let meta = f.metadata().map_err(|err| LinuxError::Open {
        file,
        path: path.to_owned(),
        err,
    })?;
    if !meta.is_file() {
        return Err(LinuxError::NotAFile {
            file,
            path: path.to_owned(),
        });
    }
    if meta.len() == 0 {
        return Err(LinuxError::Empty {
            file,
            path: path.to_owned(),
        });
    }
    Ok(f)
}

/// Compression formats the kernel can unpack an initramfs from, by magic.
const COMPRESSED: [(&[u8], &str); 6] = [
    (&[0x1f, 0x8b], "gzip"),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
    (b"BZh", "bzip2"),
    (&[0x5d, 0, 0], "lzma"),
];

/// What the initrd check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitrdCheck {
    /// "cpio", "gzip", ... (the outer format).
    pub format: &'static str,
    /// Whether its cpio archive was read through (gzip and plain cpio only).
    pub archive_checked: bool,
    pub has_init: bool,
}

fn corrupt(msg: impl Into<String>) -> LinuxLoadError {
    LinuxLoadError::Corrupt(BootFile::Initrd, msg.into())
}

/// Checks an initramfs before boot: plain or gzip'ed newc cpio archives are read through
/// (a damaged or truncated one, or one without the `init` the kernel runs, is refused);
/// other compressions the kernel knows are accepted by their magic. `rdinit` is the
/// command line's `rdinit=` program, if any (then `/init` is not required).
pub fn check_initrd(
    data: &[u8],
    rdinit: Option<&str>,
    max_unpacked: u64,
) -> Result<InitrdCheck, LinuxLoadError> {
    let (format, archive) = if data.starts_with(b"07070") {
        ("cpio", Some(data.to_vec()))
    } else if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .take(max_unpacked + 1)
            .read_to_end(&mut out)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    corrupt("the gzip stream ends before its end: the file is truncated")
                }
                _ => corrupt(format!("the gzip stream is damaged: {e}")),
            })?;
        if out.len() as u64 > max_unpacked {
            return Err(corrupt(format!(
                "it unpacks to more than the guest's {max_unpacked} bytes of memory"
            )));
        }
        ("gzip", Some(out))
    } else if let Some((_, name)) = COMPRESSED.iter().find(|(m, _)| data.starts_with(m)) {
        (*name, None)
    } else {
        let head: Vec<String> = data.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(corrupt(format!(
            "not an initramfs: neither a newc cpio archive (\"070701\") nor gzip/xz/zstd/lz4/bzip2/lzma-compressed (starts with {})",
            head.join(" ")
        )));
    };
    let Some(archive) = archive else {
        return Ok(InitrdCheck {
            format,
            archive_checked: false,
            has_init: false,
        });
    };
    let names = cpio_names(&archive).map_err(corrupt)?;
    let want = rdinit.unwrap_or("/init").trim_start_matches('/');
    let has_init = names
        .iter()
        .any(|n| n.trim_start_matches("./").trim_start_matches('/') == want);
    if !has_init {
        return Err(corrupt(format!(
            "the archive has no /{want}, the program the kernel runs from an initramfs ({} {})",
            names.len(),
            if names.len() == 1 { "entry" } else { "entries" }
        )));
    }
    Ok(InitrdCheck {
        format,
        archive_checked: true,
        has_init,
    })
}

/// The entry names of a (possibly concatenated, zero-padded) newc cpio archive.
/// Hand-written: the format is 110-byte ASCII headers, and no crate in the project's set
/// reads it; this is the check the kernel's init/initramfs.c makes.
fn cpio_names(a: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut at = 0usize;
    let hex = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
    };
    loop {
        while at < a.len() && a[at] == 0 {
            at += 1; // padding between concatenated archives
        }
        if at >= a.len() {
            break;
        }
        let h = a
            .get(at..at + 110)
            .ok_or_else(|| format!("cpio header at byte {at} is cut short: truncated"))?;
        if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
            return Err(format!("no cpio header at byte {at} (damaged archive)"));
        }
        let field = |i: usize| {
            hex(&h[6 + 8 * i..14 + 8 * i])
                .ok_or_else(|| format!("cpio header at byte {at} has a non-hex field"))
        };
        let (size, namesize) = (field(6)?, field(11)?);
        let name_end = at + 110 + namesize as usize;
        let name = a
            .get(at + 110..name_end)
            .ok_or_else(|| format!("cpio entry name at byte {at} runs past the end: truncated"))?;
        let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
        let data_end = name_end.next_multiple_of(4) + size as usize;
        if data_end > a.len() {
            return Err(format!(
                "cpio entry {name:?} needs {size} bytes past the end of the archive: truncated"
            ));
        }
        at = data_end.next_multiple_of(4);
        if name == "TRAILER!!!" {
            continue;
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err("the cpio archive has no entries".into());
    }
    Ok(names)
}

/// The command line's value of `key=` (last one wins, as in the kernel).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// The checked boot files, open, ready for the arch loader.
#[derive(Debug)]
pub struct LinuxFiles {
    kernel: File,
    initrd: Option<File>,
    /// The complete command line.
    cmdline: String,
}

impl LinuxFiles {
    /// Bytes of the kernel file (what the loader writes; its BSS is not written).
    pub fn kernel_len(&self) -> u64 {
        self.kernel.metadata().map_or(0, |m| m.len())
    }

    pub fn initrd_len(&self) -> Option<u64> {
        self.initrd
            .as_ref()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
    }
}

/// Opens and checks everything the arch loader will read: the command line (and its workload
/// parameters), the kernel, the initrd (read through, decompressed, its `/init` found). Runs
/// before the loader thread, so the loader's own system calls are only the loading ones.
pub fn open_files(cfg: &LinuxConfig, mem_size: u64) -> Result<LinuxFiles, LinuxError> {
    let cmdline = full_cmdline(&cfg.cmdline)?;
    Params::from_cmdline(&cmdline).map_err(LinuxError::Workload)?;
    let kernel = open(BootFile::Kernel, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => {
            let mut f = open(BootFile::Initrd, p)?;
            let mut data = Vec::new();
            f.read_to_end(&mut data).map_err(|err| LinuxError::Open {
                file: BootFile::Initrd,
                path: p.clone(),
                err,
            })?;
            check_initrd(&data, cmdline_value(&cmdline, "rdinit"), mem_size).map_err(|err| {
                LinuxError::Load {
                    file: BootFile::Initrd,
                    path: p.clone(),
                    err,
                }
            })?;
            Some(f)
        }
        None => None,
    };
    Ok(LinuxFiles {
        kernel,
        initrd,
        cmdline,
    })
}

/// Has the arch loader place kernel, initrd and boot structures in `mem` (through
/// `mem.loader()`, on the calling thread), from files [`open_files`] checked.
pub fn load(
    mem: &GuestMemory,
    vcpus: u8,
    cfg: &LinuxConfig,
    mut files: LinuxFiles,
) -> Result<LinuxBoot, LinuxError> {
    arch::load_linux(
        mem,
        vcpus,
        &mut files.kernel,
        files.initrd.as_mut(),
        &files.cmdline,
    )
    .map_err(|err| match err.file() {
        Some(BootFile::Kernel) => LinuxError::Load {
            file: BootFile::Kernel,
            path: cfg.kernel.clone(),
            err,
        },
        Some(BootFile::Initrd) => LinuxError::Load {
            file: BootFile::Initrd,
            path: cfg.initrd.clone().unwrap_or_default(),
            err,
        },
        None if matches!(err, LinuxLoadError::Cmdline(_)) => LinuxError::Cmdline(err.to_string()),
        None => LinuxError::Setup(err),
    })
}

/// The Linux part of a run's report.
#[derive(Debug, Clone, Serialize)]
pub struct LinuxReport {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub boot: LinuxBoot,
    /// How the guest ended: "poweroff", "reset", "crash: ...", or "stopped" (by the VMM).
    pub end: String,
    /// From the launch to the guest's first console byte.
    pub first_console_ms: Option<f64>,
    /// From the launch to the end of the result line.
    pub result_line_ms: Option<f64>,
    pub result_line: Option<String>,
    pub result: Option<ResultLine>,
    /// The checksum the host computed for the line's fill size and seed.
    pub expected_checksum: Option<String>,
    pub checksum_verified: bool,
    /// Why the guest's run does not count as verified (None when it does).
    pub failure: Option<String>,
}

/// The verdict on a guest: its result line, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub line: Option<WatchedLine>,
    pub result: Option<ResultLine>,
    pub expected: Option<u64>,
    pub failure: Option<String>,
}

/// Judges the run from the watched console lines: exactly one well-formed result line whose
/// checksum the host recomputes, and whose fill size and seed are what the command line asked.
/// `console` (the kept console text) only serves to explain a missing line.
pub fn judge(cmdline: &str, watched: &[WatchedLine], console: &str) -> Verdict {
    let mut v = Verdict {
        line: watched.first().cloned(),
        result: None,
        expected: None,
        failure: None,
    };
    let Some(line) = &v.line else {
        v.failure = Some(format!(
            "no '{MARKER}' line on the console{}",
            why_missing(console)
        ));
        return v;
    };
    let r = match ResultLine::parse(&line.text) {
        Ok(r) => r,
        Err(e) => {
            v.failure = Some(format!("bad result line: {e}"));
            return v;
        }
    };
    v.result = Some(r);
    v.expected = Some(expected_checksum(r.fill_bytes, r.seed));
    let asked = Params::from_cmdline(cmdline).unwrap_or_default();
    v.failure = if watched.len() > 1 {
        Some(format!(
            "{} result lines on the console (the workload prints one)",
            watched.len()
        ))
    } else if let Err(e) = r.verify() {
        Some(e.to_string())
    } else if r.seed != asked.seed {
        Some(format!(
            "the guest used seed {} but the command line asked for {}",
            r.seed, asked.seed
        ))
    } else if let FillSize::Bytes(b) = asked.fill
        && r.fill_bytes != FillSize::Bytes(b).resolve(0)
    {
        Some(format!(
            "the guest filled {} bytes but the command line asked for {b}",
            r.fill_bytes
        ))
    } else {
        None
    };
    v
}

/// The last kernel panic or init failure on the console, to say why no result came.
fn why_missing(console: &str) -> String {
    let clues = [
        "Kernel panic",
        "Initramfs unpacking failed",
        "No working init found",
        "Run /init as init process",
    ];
    console
        .lines()
        .rev()
        .find(|l| clues.iter().any(|c| l.contains(c)))
        .map(|l| format!("; last clue: \"{}\"", l.trim()))
        .unwrap_or_default()
}

impl LinuxReport {
    /// One line for the report's summary.
    pub fn summary(&self) -> String {
        match (&self.failure, &self.result) {
            (None, Some(r)) => format!(
                "Linux guest verified: workload filled {} MiB (checksum {:#018x} recomputed by the host), {} forks, {} MiB tmpfs; result line {:.1} s after launch; guest ended by {}",
                r.fill_bytes >> 20,
                r.checksum,
                r.forks,
                r.tmpfs_bytes >> 20,
                self.result_line_ms.unwrap_or(0.0) / 1e3,
                self.end
            ),
            (failure, _) => format!(
                "Linux guest failed: {}; guest ended by {}",
                failure.as_deref().unwrap_or("no verified result"),
                self.end
            ),
        }
    }
}

/// How the guest ended, from the outcome of the vCPU that stopped first.
pub fn end_reason(first: Option<&VcpuOutcome>) -> String {
    match first {
        Some(VcpuOutcome::Exited { status: 0 }) => "poweroff".into(),
        Some(VcpuOutcome::Exited { status }) => format!("exit status {status}"),
        Some(VcpuOutcome::Crashed { reason }) if reason.contains("reset") => "reset".into(),
        Some(VcpuOutcome::Crashed { reason }) => format!("crash ({reason})"),
        Some(VcpuOutcome::Halted) => "halt".into(),
        Some(VcpuOutcome::RunFailed { errno_name, .. }) => {
            format!("a failed KVM_RUN ({errno_name})")
        }
        Some(VcpuOutcome::Unhandled { exit }) => {
            format!("a KVM exit pinvmm does not handle ({exit})")
        }
        Some(VcpuOutcome::Stopped) | None => "the VMM (pin failure, timeout or error)".into(),
    }
}

/// The Linux part of the report, once the VM has ended.
pub fn report(
    cfg: &LinuxConfig,
    boot: LinuxBoot,
    first_stop: Option<&VcpuOutcome>,
    console: &ConsoleSink,
    console_text: &str,
    t0: Instant,
) -> LinuxReport {
    let v = judge(&boot.cmdline, &console.watched(), console_text);
    LinuxReport {
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        end: end_reason(first_stop),
        first_console_ms: console.first_output().map(|t| ms_since(t0, t)),
        result_line_ms: v.line.as_ref().map(|l| ms_since(t0, l.at)),
        result_line: v.line.map(|l| l.text),
        checksum_verified: v.result.is_some_and(|r| Some(r.checksum) == v.expected),
        result: v.result,
        expected_checksum: v.expected.map(|e| format!("{e:#018x}")),
        failure: v.failure,
        boot,
    }
}

/// Milliseconds from `t0` to `t`.
pub fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn cpio(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut a = Vec::new();
        let mut push = |name: &str, data: &[u8]| {
            let n = name.len() + 1;
            let h = format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1,
                0o100755,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                n,
                0
            );
            a.extend_from_slice(h.as_bytes());
            a.extend_from_slice(name.as_bytes());
            a.push(0);
            while a.len() % 4 != 0 {
                a.push(0);
            }
            a.extend_from_slice(data);
            while a.len() % 4 != 0 {
                a.push(0);
            }
        };
        for (n, d) in entries {
            push(n, d);
        }
        push("TRAILER!!!", b"");
        a
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn good_initramfs_pass_and_name_their_format() {
        let a = cpio(&[("bin", b""), ("init", b"#!/bin/sh\n")]);
        assert_eq!(check_initrd(&a, None, 1 << 20).unwrap().format, "cpio");
        let c = check_initrd(&gz(&a), None, 1 << 20).unwrap();
        assert!(c.archive_checked && c.has_init && c.format == "gzip");
        // Concatenated archives (early microcode + main) are fine.
        let mut two = gz(&cpio(&[("kernel", b"x")]));
        two.extend(gz(&a));
        assert!(check_initrd(&two, None, 1 << 20).is_ok());
        let x = check_initrd(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1], None, 1 << 20).unwrap();
        assert!(!x.archive_checked && x.format == "xz");
    }

    #[test]
    fn bad_initramfs_say_what_is_wrong() {
        let a = cpio(&[("init", b"#!/bin/sh\nexec /bin/sh\n")]);
        let g = gz(&a);
        let msg = |d: &[u8]| check_initrd(d, None, 1 << 20).unwrap_err().to_string();
        let cut = msg(&g[..g.len() - 10]);
        assert!(cut.contains("truncated"), "{cut}");
        let mut bad = g.clone();
        bad[12] ^= 0xff;
        assert!(msg(&bad).contains("gzip"), "{}", msg(&bad));
        assert!(msg(&a[..a.len() - 20]).contains("truncated"));
        assert!(msg(b"hello world").contains("not an initramfs"));
        assert!(msg(&cpio(&[("sbin/init", b"x")])).contains("no /init"));
        assert!(check_initrd(&cpio(&[("sbin/init", b"x")]), Some("/sbin/init"), 1 << 20).is_ok());
        assert!(msg(&gz(&vec![0; 2 << 20])).contains("more than"));
    }

    #[test]
    fn cmdline_puts_the_console_first_and_refuses_what_linux_cannot_take() {
        let c = full_cmdline("  pinvmm.fill=64M quiet ").unwrap();
        assert!(c.starts_with(arch::LINUX_CMDLINE_BASE));
        assert!(c.ends_with(" pinvmm.fill=64M quiet"));
        assert!(full_cmdline(&"x".repeat(3000)).is_err());
        assert!(full_cmdline("bad\u{7}char").is_err());
        assert_eq!(
            cmdline_value("a=1 rdinit=/x b rdinit=/y", "rdinit"),
            Some("/y")
        );
        assert_eq!(cmdline_value("ardinit=1", "rdinit"), None);
    }

    fn line(r: &ResultLine) -> WatchedLine {
        WatchedLine {
            text: r.to_string(),
            at: Instant::now(),
        }
    }

    fn good(fill: u64, seed: u64) -> ResultLine {
        ResultLine {
            status: guest::workload::Status::Ok,
            fill_bytes: fill,
            seed,
            checksum: expected_checksum(fill, seed),
            tmpfs_bytes: 1 << 20,
            forks: 2,
            errors: 0,
            elapsed_ms: 5,
        }
    }

    #[test]
    fn verdict_recomputes_the_checksum_and_checks_what_was_asked() {
        let ok = good(1 << 20, 7);
        let v = judge("pinvmm.fill=1M pinvmm.seed=7", &[line(&ok)], "");
        assert_eq!(v.failure, None);
        assert_eq!(v.expected, Some(ok.checksum));
        let wrong = ResultLine {
            checksum: ok.checksum ^ 1,
            ..ok
        };
        let v = judge("pinvmm.seed=7", &[line(&wrong)], "");
        assert!(v.failure.unwrap().contains("differs"));
        let v = judge("pinvmm.seed=8", &[line(&ok)], "");
        assert!(v.failure.unwrap().contains("seed 7"));
        let v = judge("pinvmm.fill=2M pinvmm.seed=7", &[line(&ok)], "");
        assert!(v.failure.unwrap().contains("filled"));
        let v = judge("pinvmm.seed=7", &[line(&ok), line(&ok)], "");
        assert!(v.failure.unwrap().contains("2 result lines"));
        let v = judge(
            "",
            &[],
            "boot\n[ 1.2] Kernel panic - not syncing: No working init found.\n",
        );
        assert!(v.failure.unwrap().contains("Kernel panic"));
        let garbled = WatchedLine {
            text: format!("{MARKER} {{\"status\":"),
            at: Instant::now(),
        };
        assert!(
            judge("", &[garbled], "")
                .failure
                .unwrap()
                .contains("bad result line")
        );
    }
}
