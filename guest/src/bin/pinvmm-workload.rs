// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! pinvmm-workload: the Linux guest's memory workload, run by the initramfs's /init
//! (guest/linux/build). It uses guest memory the way a real guest does: user-space anonymous
//! memory (a seeded fill over most of RAM, verified twice), the page cache (a tmpfs file
//! written, read back, verified and truncated in rounds) and several processes (children that
//! each fill and verify their own memory). Then it prints one `pinvmm-result: {...}` line
//! (guest::workload::ResultLine) at column 0 on the console.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::Parser;
use guest::workload::{
    Checksum, MAX_CHILD_BYTES, Params, ResultLine, Status, TMPFS_ROUNDS, child_seed, pattern_word,
};

#[derive(Debug, Parser)]
#[command(
    name = "pinvmm-workload",
    about = "pinvmm's Linux guest workload: fill and verify guest RAM, churn the page cache \
             through a tmpfs file, fork children; print one pinvmm-result line.",
    after_help = "Parameters come from the kernel command line (/proc/cmdline):\n  \
        pinvmm.fill=SIZE|N%   memory to fill and verify (default 60% of MemAvailable)\n  \
        pinvmm.seed=N         pattern seed (default 1)\n  \
        pinvmm.forks=N        child processes (default 4)\n  \
        pinvmm.tmpfs=SIZE     tmpfs file size per churn round (default 16M)\n\
        SIZE is bytes or K/M/G. Exit status: 0 ok, 1 failed, 2 bad parameters.\n\
        The result line goes to /dev/console, or to /dev/kmsg when the console cannot be \
        opened (earlycon only), or to stdout with --stdout."
)]
struct Args {
    /// Read the parameters from this text instead of /proc/cmdline.
    #[arg(long)]
    cmdline: Option<String>,
    /// Print the result line on stdout instead of the console (for runs on a host).
    #[arg(long)]
    stdout: bool,
    /// Directory on a tmpfs for the page-cache churn file.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Host side: find the pinvmm-result line in this console log ('-' for stdin), recompute
    /// its checksum and exit 0 only if it verifies (1: failed or wrong, 2: no line).
    #[arg(long, value_name = "LOG")]
    verify_console: Option<PathBuf>,
    /// Internal: run as child process N (fill and verify --bytes of memory, print errors=N).
    #[arg(long, hide = true, requires_all = ["bytes", "seed"])]
    child: Option<u64>,
    #[arg(long, hide = true)]
    bytes: Option<u64>,
    #[arg(long, hide = true)]
    seed: Option<u64>,
}

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("pinvmm-workload: {msg}");
}

macro_rules! log {
    ($($t:tt)*) => { log(format_args!($($t)*)) };
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no MemAvailable in /proc/meminfo"))
}

/// Allocates `bytes` of anonymous memory and writes the seeded pattern into every word.
fn fill(bytes: u64, seed: u64) -> io::Result<Vec<u64>> {
    let words = usize::try_from(bytes / 8).map_err(io::Error::other)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(words)
        .map_err(|e| io::Error::other(format!("cannot allocate {bytes} bytes: {e}")))?;
    buf.extend((0..words as u64).map(|i| pattern_word(seed, i)));
    Ok(buf)
}

/// Reads every word back: the checksum of what is in memory and the words that differ.
fn verify(buf: &[u64], seed: u64) -> (u64, u64) {
    let mut sum = Checksum::default();
    let mut errors = 0;
    for (i, &w) in buf.iter().enumerate() {
        sum.add(w);
        if w != pattern_word(seed, i as u64) {
            errors += 1;
        }
    }
    (sum.value(), errors)
}

const CHUNK_WORDS: u64 = 8192; // 64 KiB per write/read

fn chunk_bytes(seed: u64, first_word: u64, words: u64) -> Vec<u8> {
    (first_word..first_word + words)
        .flat_map(|i| pattern_word(seed, i).to_le_bytes())
        .collect()
}

/// One churn round: write the file, read it back through a fresh descriptor, compare, truncate.
/// Returns the words that read back wrong.
fn churn_round(path: &Path, bytes: u64, seed: u64) -> io::Result<u64> {
    let words = bytes / 8;
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let mut w = 0;
    while w < words {
        let n = CHUNK_WORDS.min(words - w);
        file.write_all(&chunk_bytes(seed, w, n))?;
        w += n;
    }
    drop(file);
    let mut file = File::open(path)?;
    let mut errors = 0;
    let mut got = vec![0u8; (CHUNK_WORDS * 8) as usize];
    let mut w = 0;
    while w < words {
        let n = CHUNK_WORDS.min(words - w);
        let got = &mut got[..(n * 8) as usize];
        file.read_exact(got)?;
        let want = chunk_bytes(seed, w, n);
        errors += got
            .chunks_exact(8)
            .zip(want.chunks_exact(8))
            .filter(|(a, b)| a != b)
            .count() as u64;
        w += n;
    }
    if file.read(&mut [0u8; 1])? != 0 {
        return Err(io::Error::other("the file is longer than written"));
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(errors)
}

/// Page-cache churn through a tmpfs file; returns the error count (I/O failures count 1).
fn churn(dir: &Path, bytes: u64, seed: u64) -> u64 {
    let path = dir.join("pinvmm-churn");
    let mut errors = 0;
    for round in 0..TMPFS_ROUNDS {
        match churn_round(&path, bytes, child_seed(seed, 1000 + round)) {
            Ok(e) => errors += e,
            Err(e) => {
                log!("tmpfs churn round {round} in {}: {e}", path.display());
                errors += 1;
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    errors
}

/// Spawns `forks` children (this program again, in --child mode) that each fill and verify
/// `bytes` of their own memory at the same time; returns (children that finished, errors).
fn fork_children(forks: u64, bytes: u64, seed: u64) -> (u64, u64) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            log!("cannot find my own executable to fork children: {e}");
            return (0, 1);
        }
    };
    let mut children = Vec::new();
    let mut errors = 0;
    for i in 0..forks {
        let spawned = Command::new(&exe)
            .args(["--child", &i.to_string(), "--bytes", &bytes.to_string()])
            .args(["--seed", &child_seed(seed, i).to_string()])
            .stdout(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => children.push((i, c)),
            Err(e) => {
                log!("cannot fork child {i}: {e}");
                errors += 1;
            }
        }
    }
    let mut done = 0;
    for (i, child) in children {
        match child.wait_with_output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let reported = text
                    .trim()
                    .strip_prefix("errors=")
                    .and_then(|n| n.parse::<u64>().ok());
                match (out.status.success(), reported) {
                    (true, Some(0)) => done += 1,
                    (_, Some(n)) if n > 0 => {
                        log!("child {i}: {n} words read back wrong");
                        done += 1;
                        errors += n;
                    }
                    _ => {
                        log!("child {i} failed: {} (stdout {text:?})", out.status);
                        errors += 1;
                    }
                }
            }
            Err(e) => {
                log!("cannot wait for child {i}: {e}");
                errors += 1;
            }
        }
    }
    (done, errors)
}

fn run_child(bytes: u64, seed: u64) -> ExitCode {
    let errors = match fill(bytes, seed) {
        Ok(buf) => verify(&buf, seed).1,
        Err(e) => {
            log!("child: {e}");
            return ExitCode::from(1);
        }
    };
    println!("errors={errors}");
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes the result line where the host sees it at column 0: the console if it can be
/// opened (a leading newline ends any half-written line), else /dev/kmsg (earlycon-only
/// guests have no /dev/console; the kernel then prints the record with its timestamp prefix,
/// which ResultLine::parse accepts). Level <2> (crit) so `quiet` does not hide it.
fn emit(line: &ResultLine, to_stdout: bool) {
    let text = line.to_string();
    if to_stdout {
        println!("{text}");
        return;
    }
    let console = OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .and_then(|mut c| c.write_all(format!("\n{text}\n").as_bytes()));
    let Err(console_err) = console else { return };
    let kmsg = OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut k| k.write_all(format!("<2>{text}\n").as_bytes()));
    if let Err(kmsg_err) = kmsg {
        log!("cannot write to /dev/console ({console_err}) nor /dev/kmsg ({kmsg_err}); stdout:");
        println!("{text}");
    }
}

fn verify_console(path: &Path) -> ExitCode {
    let text = if path == Path::new("-") {
        let mut t = Vec::new();
        io::stdin().read_to_end(&mut t).map(|_| t)
    } else {
        std::fs::read(path)
    };
    let text = match text {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) => {
            log!("cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match ResultLine::find(&text) {
        None => {
            log!("no pinvmm-result line in {}", path.display());
            ExitCode::from(2)
        }
        Some(Err(e)) => {
            log!("bad pinvmm-result line: {e}");
            ExitCode::from(1)
        }
        Some(Ok(line)) => match line.verify() {
            Ok(()) => {
                println!(
                    "verified: {} MiB filled with seed {}, checksum {:#018x}, {} forks, tmpfs {} KiB, {} ms in the guest",
                    line.fill_bytes >> 20,
                    line.seed,
                    line.checksum,
                    line.forks,
                    line.tmpfs_bytes >> 10,
                    line.elapsed_ms
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                log!("the result line does not verify: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.verify_console {
        return verify_console(path);
    }
    if let (Some(_), Some(bytes), Some(seed)) = (args.child, args.bytes, args.seed) {
        return run_child(bytes, seed);
    }
    let start = Instant::now();
    let mut result = ResultLine {
        status: Status::Failed,
        fill_bytes: 0,
        seed: 0,
        checksum: 0,
        tmpfs_bytes: 0,
        forks: 0,
        errors: 1,
        elapsed_ms: 0,
    };
    let cmdline = match args.cmdline.clone() {
        Some(c) => Ok(c),
        None => std::fs::read_to_string("/proc/cmdline"),
    };
    let params = match cmdline
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))
        .and_then(|c| Params::from_cmdline(&c).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            log!("error: {e}");
            emit(&result, args.stdout);
            return ExitCode::from(2);
        }
    };
    let avail = match mem_available() {
        Ok(a) => a,
        Err(e) => {
            log!("error: {e}");
            emit(&result, args.stdout);
            return ExitCode::from(2);
        }
    };
    let fill_bytes = params.fill.resolve(avail);
    let tmpfs_bytes = params.tmpfs_bytes & !7;
    let child_bytes = (MAX_CHILD_BYTES.min(avail / 20) & !4095).max(4096);
    result.seed = params.seed;
    result.fill_bytes = fill_bytes;
    result.tmpfs_bytes = tmpfs_bytes;
    result.errors = 0;
    log!(
        "MemAvailable {:.1} MiB: fill {:.1} MiB (seed {}), tmpfs {:.1} MiB x {TMPFS_ROUNDS} rounds, {} children x {:.1} MiB",
        mib(avail),
        mib(fill_bytes),
        params.seed,
        mib(tmpfs_bytes),
        params.forks,
        mib(child_bytes)
    );

    let t = Instant::now();
    let buf = match fill(fill_bytes, params.seed) {
        Ok(b) => b,
        Err(e) => {
            log!("error: fill: {e}");
            result.errors = 1;
            result.elapsed_ms = start.elapsed().as_millis() as u64;
            emit(&result, args.stdout);
            return ExitCode::from(1);
        }
    };
    let (first_sum, errors) = verify(&buf, params.seed);
    result.errors += errors;
    log!(
        "fill + verify: {:.0} ms, {errors} errors",
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let errors = churn(&args.dir, tmpfs_bytes, params.seed);
    result.errors += errors;
    log!(
        "tmpfs churn: {:.0} ms, {errors} errors",
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let (forks, errors) = fork_children(params.forks, child_bytes, params.seed);
    result.forks = forks;
    result.errors += errors;
    log!(
        "children: {forks}/{} finished in {:.0} ms, {errors} errors",
        params.forks,
        t.elapsed().as_secs_f64() * 1e3
    );

    // The fill again, after the page-cache and fork pressure.
    let t = Instant::now();
    let (sum, errors) = verify(&buf, params.seed);
    result.errors += errors;
    if sum != first_sum && errors == 0 {
        result.errors += 1;
    }
    result.checksum = sum;
    log!(
        "re-verify: {:.0} ms, {errors} errors",
        t.elapsed().as_secs_f64() * 1e3
    );

    // A child that did not finish counted an error, so errors == 0 means all of them ran.
    if result.errors == 0 {
        result.status = Status::Ok;
    }
    result.elapsed_ms = start.elapsed().as_millis() as u64;
    emit(&result, args.stdout);
    if result.status == Status::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
