// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm campaign`: many VMs per (policy × backing × fault-in) cell, each in its own child
//! process, interleaved round-robin so machine drift hits every cell alike; results in an
//! append-only journal (`--resume` continues a killed campaign); rates with Wilson intervals,
//! comparisons, KTAP.

pub mod chart;
pub mod journal;
pub mod plot;
pub mod stats;
pub mod summary;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Args;
use guest::Payload;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::named;
use journal::{FailureNote, Journal, RunRecord};
use summary::{CellSummary, Comparison, Expectation};
use vmm::config::parse_size;
use vmm::exit_code::ExitCode;
use vmm::host::HostFacts;
use vmm::stage2::drain::DrainPolicy;
use vmm::{Backing, CpuPlacement, FaultIn, HostLimits, VmConfig, VmType};

/// Arguments of `pinvmm campaign`.
#[derive(Args, Debug, Clone)]
pub struct CampaignArgs {
    /// Drain policies to compare (comma-separated).
    #[arg(
        long,
        value_parser = named::<DrainPolicy>(),
        value_delimiter = ',',
        default_value = "none,lru-add-drain,mlock-drain"
    )]
    pub policies: Vec<DrainPolicy>,
    /// Memory backings (comma-separated).
    #[arg(long, value_parser = named::<Backing>(), value_delimiter = ',', default_value = "shmem")]
    pub backing: Vec<Backing>,
    /// Fault-in orders (comma-separated): pin (pKVM-exact, the default), touch (a stress
    /// model). See `pinvmm run --help`.
    #[arg(long, value_parser = named::<FaultIn>(), value_delimiter = ',', default_value = "pin")]
    pub fault_in: Vec<FaultIn>,
    /// VMs per cell.
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    /// Guest payload of every VM.
    #[arg(long, default_value = "memtouch", conflicts_with = "kernel")]
    pub guest: String,
    /// Boot this Linux kernel in every VM instead of a payload (as `pinvmm run --kernel`;
    /// the verdict is the guest workload's result line).
    #[arg(long, value_name = "IMAGE")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel, after pinvmm's console arguments.
    #[arg(long, value_name = "ARGS", requires = "kernel", default_value = "")]
    pub cmdline: String,
    /// Thread placement of every VM: pinned (loader/fault-in on --fault-cpu, pins and vCPU
    /// on --pin-cpu) or free (nothing placed: the scheduler decides, as crosvm runs).
    #[arg(long, default_value = "pinned", value_parser = ["pinned", "free"])]
    pub cpus: String,
    /// Guest memory per VM.
    #[arg(long, default_value = "64M")]
    pub mem: String,
    /// LRU noise pages per fault on the fault CPU: N or lru:N.
    #[arg(long, default_value = "0", value_name = "[lru:]N")]
    pub noise: String,
    /// Percent of guest memory prefilled through the loader view before boot.
    #[arg(long, default_value_t = 0)]
    pub prefill: u8,
    /// VM type of every VM: normal (pinvmm's userfaultfd resolver pins) or protected (pKVM:
    /// KVM pins; arm64 with kvm-arm.mode=protected, Linux 7.x). See `pinvmm run --help`.
    #[arg(long, value_parser = named::<VmType>(), default_value = "normal")]
    pub vm_type: VmType,
    /// CPU of the fault-in thread (passed to every VM).
    #[arg(long)]
    pub fault_cpu: Option<usize>,
    /// CPU of the pin thread, or `same` (passed to every VM).
    #[arg(long)]
    pub pin_cpu: Option<String>,
    /// A shell command run (sh -c) before every VM, e.g. to drop a disk's page cache:
    /// "umount /mnt && mount /dev/vda /mnt" (the cold-cache cells of docs/PKVM.md). A run
    /// whose command fails is recorded as crashed, with its output.
    #[arg(long, value_name = "CMD")]
    pub before_run: Option<String>,
    /// VMs run at once. Keep 1 when matching failures against /proc/vmstat (it is system-wide).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Per-VM timeout in seconds; a VM that hangs past it (+15 s) is killed and recorded as `timeout`.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Make each VM, with probability P, fail one pin (at a random pin among its first 64): a known truth to check the statistics against.
    #[arg(long, value_name = "P")]
    pub inject_pin_failure_rate: Option<f64>,
    /// Seed of the injection draws (same seed, same draws: resumable).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for campaign.json, runs.jsonl (the journal), summary.json, summary.csv, results.ktap.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the campaign in --out: runs already in the journal are not run again.
    #[arg(long)]
    pub resume: bool,
    /// Print KTAP v1 on stdout (one test per cell) instead of the table.
    #[arg(long)]
    pub ktap: bool,
    /// Expected bounds per policy, e.g. none>0,mlock-drain==0 (KTAP ok/not ok; exit code 8 when one fails).
    #[arg(long)]
    pub expect: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run every VM with --trace: the kernel's migrate: events of each VM's own threads and
    /// the folio state before each pin, to explain failed pins (needs root and tracefs).
    #[arg(long)]
    pub trace: bool,
}

/// What defines a campaign (a resumed campaign must match it; `runs` may grow).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CampaignSpec {
    pub policies: Vec<String>,
    pub backings: Vec<String>,
    pub fault_ins: Vec<String>,
    pub guest: String,
    pub mem: u64,
    pub noise: u32,
    pub prefill: u8,
    pub fault_cpu: usize,
    pub pin_cpu: usize,
    pub timeout: f64,
    pub inject_pin_failure_rate: Option<f64>,
    pub seed: u64,
    /// normal | protected (older campaigns, without the field, were normal).
    #[serde(default = "normal_vm")]
    pub vm_type: String,
    /// Every VM ran with --trace (older campaigns: no).
    #[serde(default)]
    pub trace: bool,
    /// `--kernel`, `--initrd`, `--cmdline` (absent in older campaigns: payloads).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    /// pinned | free (older campaigns: pinned).
    #[serde(default = "pinned")]
    pub cpus: String,
    #[serde(default)]
    pub before_run: Option<String>,
}

fn pinned() -> String {
    "pinned".into()
}

fn normal_vm() -> String {
    "normal".into()
}

/// One cell of the campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub name: String,
    pub policy: DrainPolicy,
    pub backing: Backing,
    pub fault_in: FaultIn,
}

#[derive(Debug, Clone)]
struct Job {
    cell: Cell,
    run: u64,
    inject_at: Option<u64>,
}

/// Failures before or around the runs (not outcomes of VMs).
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

impl CampaignError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CampaignError::BadInput(_) => ExitCode::BadInput,
            _ => ExitCode::VmmError,
        }
    }
}

fn parse_noise(s: &str) -> Result<u32, String> {
    s.strip_prefix("lru:")
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("--noise '{s}' is not N or lru:N (pages of LRU noise per fault)"))
}

/// Validates the arguments and resolves them into a spec (host defaults filled in).
pub fn spec_of(a: &CampaignArgs, host: &HostLimits) -> Result<CampaignSpec, String> {
    if a.runs == 0 {
        return Err("--runs 0: a campaign needs at least one run per cell".into());
    }
    if a.jobs == 0 || a.jobs > 64 {
        return Err(format!("--jobs {} is out of range: use 1 to 64", a.jobs));
    }
    if let Some(p) = a
        .inject_pin_failure_rate
        .filter(|p| !(0.0..=1.0).contains(p) || p.is_nan())
    {
        return Err(format!(
            "--inject-pin-failure-rate {p} is not a probability between 0 and 1"
        ));
    }
    if a.policies.is_empty() || a.backing.is_empty() || a.fault_in.is_empty() {
        return Err("--policies, --backing and --fault-in each need at least one value".into());
    }
    if a.vm_type != VmType::Normal && a.inject_pin_failure_rate.is_some() {
        return Err("--inject-pin-failure-rate works only with --vm-type normal (KVM takes a protected VM's pins)".into());
    }
    let payload =
        Payload::from_name(&a.guest).ok_or_else(|| format!("unknown guest '{}'", a.guest))?;
    let mem = parse_size(&a.mem)?;
    let def = host.default_placement();
    let fault_cpu = a.fault_cpu.unwrap_or(def.fault_cpu);
    let pin_cpu = match a.pin_cpu.as_deref() {
        None => def.pin_cpu,
        Some("same") => fault_cpu,
        Some(n) => n
            .parse()
            .map_err(|_| format!("--pin-cpu '{n}' is neither a CPU number nor 'same'"))?,
    };
    let noise = parse_noise(&a.noise)?;
    if !a.timeout.is_finite() || a.timeout <= 0.0 {
        return Err(format!(
            "--timeout {} must be more than 0 seconds",
            a.timeout
        ));
    }
    if a.cpus == "free" && (a.fault_cpu.is_some() || a.pin_cpu.is_some()) {
        return Err("--cpus free places no thread: drop --fault-cpu/--pin-cpu".into());
    }
    // Every cell's VM configuration must be valid before anything runs.
    for &b in &a.backing {
        for &f in &a.fault_in {
            let placement = CpuPlacement {
                fault_cpu,
                pin_cpu,
                free: a.cpus == "free",
            };
            let mut c = VmConfig::new(payload, mem, placement);
            (c.backing, c.noise_pages, c.prefill_pct) = (b, noise, a.prefill);
            (c.vm_type, c.fault_in) = (a.vm_type, f);
            c.validate(host).map_err(|e| e.to_string())?;
        }
    }
    for (what, p) in [("--kernel", &a.kernel), ("--initrd", &a.initrd)] {
        if let Some(p) = p
            && !p.is_file()
        {
            return Err(format!("{what} {}: not a readable file", p.display()));
        }
    }
    // --jobs VMs at a time: their mlock and pins all count against RLIMIT_MEMLOCK.
    vmm::config::check_memlock(host, mem, a.jobs as u64).map_err(|e| e.to_string())?;
    if let Some(e) = &a.expect {
        let exps = Expectation::parse_list(e)?;
        if let Some(x) = exps
            .iter()
            .find(|x| !a.policies.iter().any(|p| p.name() == x.policy))
        {
            return Err(format!(
                "--expect names policy '{}', which this campaign does not run",
                x.policy
            ));
        }
    }
    Ok(CampaignSpec {
        policies: a.policies.iter().map(|p| p.name().to_owned()).collect(),
        backings: a.backing.iter().map(|b| b.to_string()).collect(),
        fault_ins: a.fault_in.iter().map(|f| f.to_string()).collect(),
        guest: a.guest.clone(),
        mem,
        noise,
        prefill: a.prefill,
        fault_cpu,
        pin_cpu,
        timeout: a.timeout,
        inject_pin_failure_rate: a.inject_pin_failure_rate,
        seed: a.seed,
        vm_type: format!("{:?}", a.vm_type).to_lowercase(),
        trace: a.trace,
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
        cpus: a.cpus.clone(),
        before_run: a.before_run.clone(),
    })
}

/// The cells, in a fixed order.
pub fn cells(a: &CampaignArgs) -> Vec<Cell> {
    let mut v = Vec::new();
    for &backing in &a.backing {
        for &fault_in in &a.fault_in {
            for &policy in &a.policies {
                let mut name = format!("{backing}/{}", policy.name());
                if a.fault_in.len() > 1 {
                    name.push_str(&format!("/{fault_in}"));
                }
                v.push(Cell {
                    name,
                    policy,
                    backing,
                    fault_in,
                });
            }
        }
    }
    v
}

/// splitmix64: a tiny deterministic generator, so injection draws survive --resume.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn injection(seed: u64, cell_idx: usize, run: u64, rate: Option<f64>) -> Option<u64> {
    let p = rate?;
    let h = splitmix(seed ^ splitmix((cell_idx as u64) << 32 ^ run));
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    (u < p).then(|| 1 + splitmix(h) % 64)
}

/// The jobs still to run, round-robin over cells: run 0 of every cell, then run 1, ...
fn plan(cells: &[Cell], runs: u64, done: &HashSet<String>, spec: &CampaignSpec) -> Vec<Job> {
    let mut jobs = Vec::new();
    for run in 0..runs {
        for (i, c) in cells.iter().enumerate() {
            if !done.contains(&format!("{}#{run}", c.name)) {
                let inject_at = injection(spec.seed, i, run, spec.inject_pin_failure_rate);
                jobs.push(Job {
                    cell: c.clone(),
                    run,
                    inject_at,
                });
            }
        }
    }
    jobs
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn child_args(spec: &CampaignSpec, job: &Job, json: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--quiet",
        "--mem",
        &spec.mem.to_string(),
        "--backing",
        &job.cell.backing.to_string(),
        "--policy",
        job.cell.policy.name(),
        "--fault-in",
        &job.cell.fault_in.to_string(),
        "--noise",
        &spec.noise.to_string(),
        "--prefill",
        &spec.prefill.to_string(),
        "--timeout",
        &spec.timeout.to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(json.display().to_string());
    if spec.cpus == "free" {
        v.extend(["--cpus".into(), "free".into()]);
    } else {
        v.extend([
            "--fault-cpu".into(),
            spec.fault_cpu.to_string(),
            "--pin-cpu".into(),
            spec.pin_cpu.to_string(),
        ]);
    }
    if let Some(k) = &spec.kernel {
        v.extend(["--kernel".into(), k.display().to_string()]);
        if let Some(i) = &spec.initrd {
            v.extend(["--initrd".into(), i.display().to_string()]);
        }
        v.extend(["--cmdline".into(), spec.cmdline.clone()]);
    } else {
        v.extend(["--guest".into(), spec.guest.clone()]);
    }
    if spec.vm_type != "normal" {
        v.push("--vm-type".into());
        v.push(spec.vm_type.clone());
    }
    if spec.trace {
        v.push("--trace".into());
    }
    if let Some(n) = job.inject_at {
        v.push("--inject".into());
        v.push(format!("pin-update@{n}:ENOMEM"));
    }
    v
}

/// Runs one VM in a child process and turns its report into a record.
fn run_child(exe: &Path, tmp: &Path, spec: &CampaignSpec, job: &Job) -> RunRecord {
    use std::os::unix::process::CommandExt;
    let key = format!("{}#{}", job.cell.name, job.run);
    let file = key.replace(['/', '#'], "_");
    let json = tmp.join(format!("{file}.json"));
    let errlog = tmp.join(format!("{file}.stderr"));
    let _ = std::fs::remove_file(&json);
    if let Some(cmd) = &spec.before_run {
        match Command::new("sh").args(["-c", cmd]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let note = format!(
                    "--before-run failed ({}): {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout).trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return record_of(&key, job, spec, -1, None, Some(note), Duration::ZERO);
            }
            Err(e) => {
                let note = format!("--before-run: cannot run sh: {e}");
                return record_of(&key, job, spec, -1, None, Some(note), Duration::ZERO);
            }
        }
    }
    let t = Instant::now();
    let stderr = std::fs::File::create(&errlog)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    // Own process group: a Ctrl-C at the terminal stops the campaign, not the VMs in flight.
    let child = Command::new(exe)
        .args(child_args(spec, job, &json))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn();
    let (code, note) = match child {
        Err(e) => (-1, Some(format!("cannot start pinvmm: {e}"))),
        Ok(mut ch) => {
            let limit = Duration::from_secs_f64(spec.timeout + 15.0);
            loop {
                match ch.try_wait() {
                    Ok(Some(st)) => {
                        use std::os::unix::process::ExitStatusExt;
                        break match st.code() {
                            Some(c) => (c, None),
                            None => (
                                -1,
                                Some(format!("pinvmm killed by signal {:?}", st.signal())),
                            ),
                        };
                    }
                    Ok(None) if t.elapsed() > limit => {
                        let _ = ch.kill();
                        let _ = ch.wait();
                        break (
                            ExitCode::Timeout as i32,
                            Some("hung: killed by the campaign".into()),
                        );
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => break (-1, Some(format!("waiting for pinvmm: {e}"))),
                }
            }
        }
    };
    let report: Option<Value> = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let mut note = note;
    if report.is_none() && note.is_none() {
        let err = std::fs::read_to_string(&errlog).unwrap_or_default();
        note = Some(format!("exit {code} without a report: {}", err.trim()));
    }
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&errlog);
    record_of(&key, job, spec, code, report.as_ref(), note, t.elapsed())
}

fn record_of(
    key: &str,
    job: &Job,
    spec: &CampaignSpec,
    code: i32,
    rep: Option<&Value>,
    note: Option<String>,
    wall: Duration,
) -> RunRecord {
    let null = Value::Null;
    let rep = rep.unwrap_or(&null);
    let res = &rep["resolver"];
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let outcome = match rep["outcome"].as_str() {
        Some(o) => o.to_owned(),
        None if note.as_deref().is_some_and(|n| n.starts_with("hung")) => "timeout".into(),
        None => "crashed".into(),
    };
    let vmstat_delta = rep["vmstat_delta"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    RunRecord {
        key: key.to_owned(),
        cell: job.cell.name.clone(),
        run: job.run,
        policy: job.cell.policy.name().to_owned(),
        backing: job.cell.backing.to_string(),
        fault_in: job.cell.fault_in.to_string(),
        noise: spec.noise,
        prefill: spec.prefill,
        outcome,
        exit_code: code,
        injected_at: job.inject_at,
        pins_attempted: u(&res["pins"]["attempted"]),
        pins_ok: u(&res["pins"]["ok"]),
        pins_failed: u(&res["pins"]["failed"]),
        pins_retried: u(&res["retried_pins"]),
        faults: u(&res["faults"]),
        fault_p50_us: f(&res["fault_latency"]["p50_us"]),
        fault_p99_us: f(&res["fault_latency"]["p99_us"]),
        pin_p50_us: f(&res["pin_latency"]["p50_us"]),
        pin_p99_us: f(&res["pin_latency"]["p99_us"]),
        drains_local: u(&res["drain"]["local_drains"]),
        drains_all: u(&res["drain"]["all_drains"]),
        drain_ms: f(&res["drain"]["total_ns"]) / 1e6,
        vmstat_delta,
        termination_errno: rep["termination"]["errno_name"].as_str().map(str::to_owned),
        termination_gpa: rep["termination"]["gpa"].as_u64(),
        wall_ms: wall.as_secs_f64() * 1e3,
        kernel: rep["host"]["kernel_release"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        note,
        failures: failure_notes(rep),
        fault_to_pin_p50_us: f(&res["fault_to_pin_latency"]["p50_us"]),
        fault_to_pin_max_us: f(&res["fault_to_pin_latency"]["max_us"]),
        kernel_pin_failed: rep["kernel_trace"]["pin_failed"].as_u64(),
        kernel_pin_migrations: rep["kernel_trace"]["pin_migrations"].as_u64(),
        git_commit: rep["build"]["git_commit"].as_str().map(str::to_owned),
        git_dirty: rep["build"]["git_dirty"].as_bool(),
        vm_type: spec.vm_type.clone(),
        model: rep["model"].as_str().map(str::to_owned),
        loader_tail_pending_on_lru: rep["loader"]["tail"]["pending_on_lru"].as_u64(),
        loader_tail_off_lru: rep["loader"]["tail"]["off_lru"].as_u64(),
        protected_efaults: rep["protected"]["efaults"].as_u64(),
        result_line_ms: rep["linux"]["result_line_ms"].as_f64(),
    }
}

/// The report's failed pins (`failed_pins`), reduced to what a campaign keeps.
fn failure_notes(rep: &Value) -> Vec<FailureNote> {
    let Some(list) = rep["failed_pins"].as_array() else {
        return Vec::new();
    };
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let cpu = |v: &Value| v.as_u64().and_then(|c| u32::try_from(c).ok());
    list.iter()
        .map(|f| FailureNote {
            signature: s(&f["verdict"]["signature"]).unwrap_or_else(|| "unknown".into()),
            decided_by: s(&f["verdict"]["decided_by"]).unwrap_or_default(),
            outcome: s(&f["outcome"]).unwrap_or_default(),
            gpa: f["gpa"].as_u64().unwrap_or(0),
            pfn: f["after"]["pfn"].as_u64(),
            zone: s(&f["after"]["zone"]),
            flags_before: s(&f["before"]["short"]),
            flags_after: s(&f["after"]["short"]),
            fault_cpu: cpu(&f["path"]["fault_in"]["cpu"]),
            pin_cpu: cpu(&f["path"]["pin"]["cpu"]),
            fault_to_pin_us: f["path"]["fault_to_pin_us"].as_f64(),
            kernel_event: !f["kernel"].is_null(),
            identified_by: s(&f["identified_by"]).unwrap_or_default(),
        })
        .collect()
}

/// The summary file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignSummary {
    pub pinvmm_version: String,
    pub git_commit: String,
    /// Whether the binary's tree had uncommitted changes (None: unknown, or an older summary).
    #[serde(default)]
    pub git_dirty: Option<bool>,
    pub host: Value,
    pub spec: CampaignSpec,
    pub runs_per_cell: u64,
    pub complete: bool,
    pub cells: Vec<CellSummary>,
    pub comparisons: Vec<Comparison>,
    pub expectations: Vec<Expectation>,
    pub expectations_met: bool,
    pub zero_rate_upper_bound: f64,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CampaignError + 'a {
    move |err| CampaignError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// Runs (or resumes) a campaign; returns the process exit code.
pub fn run(a: &CampaignArgs) -> Result<ExitCode, CampaignError> {
    let host = HostLimits::probe();
    let spec = spec_of(a, &host).map_err(CampaignError::BadInput)?;
    let expect = a
        .expect
        .as_deref()
        .map(Expectation::parse_list)
        .transpose()
        .map_err(CampaignError::BadInput)?
        .unwrap_or_default();
    std::fs::create_dir_all(&a.out).map_err(io_err("cannot create", &a.out))?;
    let spec_path = a.out.join("campaign.json");
    let existing = journal::load(&a.out)?;
    if !a.resume && (!existing.is_empty() || spec_path.exists()) {
        return Err(CampaignError::BadInput(format!(
            "{} already holds a campaign: add --resume to continue it, or choose another --out",
            a.out.display()
        )));
    }
    if spec_path.exists() {
        let old: CampaignSpec = serde_json::from_str(
            &std::fs::read_to_string(&spec_path).map_err(io_err("cannot read", &spec_path))?,
        )
        .map_err(|e| {
            CampaignError::BadInput(format!(
                "{} is not a campaign spec: {e}",
                spec_path.display()
            ))
        })?;
        if old != spec {
            return Err(CampaignError::BadInput(format!(
                "--resume with different settings than {}: was {}, now {}",
                spec_path.display(),
                serde_json::to_string(&old).unwrap_or_default(),
                serde_json::to_string(&spec).unwrap_or_default()
            )));
        }
    } else {
        let text = serde_json::to_string_pretty(&spec).expect("spec serializes");
        std::fs::write(&spec_path, text + "\n").map_err(io_err("cannot write", &spec_path))?;
    }
    let cells = cells(a);
    let done: HashSet<String> = existing.iter().map(|r| r.key.clone()).collect();
    let jobs = plan(&cells, a.runs, &done, &spec);
    let total = a.runs * cells.len() as u64;
    let tmp = a.out.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io_err("cannot create", &tmp))?;
    let exe =
        std::env::current_exe().map_err(io_err("cannot find", Path::new("/proc/self/exe")))?;

    INTERRUPTED.store(false, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // A failure leaves the default (kill) behaviour; the journal still loses nothing.
        let _ = vmm_sys_util::signal::register_signal_handler(sig, on_interrupt);
    }

    let mut journal = Journal::open(&a.out)?;
    let mut records = existing;
    let bar = if a.quiet || a.ktap {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} VMs, {elapsed} elapsed, ETA {eta} | {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(records.len().min(total as usize) as u64);
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let (tx, rx) = mpsc::channel::<RunRecord>();
    // With the default placement, every other worker swaps the fault and pin CPUs: each VM
    // keeps its vCPU and pin thread on one CPU and its fault-in thread on another, as the model
    // asks, but side-by-side VMs no longer all wait on the same pin CPU.
    let swap = a.fault_cpu.is_none() && a.pin_cpu.is_none() && spec.fault_cpu != spec.pin_cpu;
    let workers: Vec<_> = (0..a.jobs)
        .map(|w| {
            let mut spec = spec.clone();
            if swap && w % 2 == 1 {
                (spec.fault_cpu, spec.pin_cpu) = (spec.pin_cpu, spec.fault_cpu);
            }
            let (q, tx, exe, tmp) = (queue.clone(), tx.clone(), exe.clone(), tmp.clone());
            std::thread::spawn(move || {
                while !INTERRUPTED.load(Ordering::SeqCst) {
                    let Some(job) = q.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                        break;
                    };
                    if tx.send(run_child(&exe, &tmp, &spec, &job)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for r in rx {
        journal.append(&r)?;
        records.push(r);
        bar.inc(1);
        bar.set_message(rates_line(&records));
    }
    for w in workers {
        let _ = w.join();
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(&tmp);
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);

    let cells_sum = summary::summarize(&records);
    let comps = summary::compare(&cells_sum);
    let guest = match &spec.kernel {
        Some(k) => format!("Linux {}", k.display()),
        None => spec.guest.clone(),
    };
    let header = format!(
        "pinvmm campaign: {} runs per cell, {guest} ({} VMs, CPUs {}) on {}; pinvmm {}",
        a.runs,
        spec.vm_type,
        spec.cpus,
        HostFacts::probe().kernel_release,
        vmm::provenance::BUILD.describe()
    );
    let (ktap, met) = summary::ktap(&cells_sum, &expect, &header);
    let expected = !expect.is_empty();
    let complete = records.len() as u64 >= total;
    let sum = CampaignSummary {
        pinvmm_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: vmm::provenance::BUILD.git_commit.into(),
        git_dirty: vmm::provenance::BUILD.git_dirty,
        host: serde_json::to_value(HostFacts::probe()).unwrap_or(Value::Null),
        spec,
        runs_per_cell: a.runs,
        complete,
        cells: cells_sum.clone(),
        comparisons: comps.clone(),
        expectations: expect,
        expectations_met: met,
        zero_rate_upper_bound: stats::zero_upper_bound(a.runs),
    };
    write_outputs(&a.out, &sum, &ktap)?;
    if a.ktap {
        print!("{ktap}");
    } else {
        print!("{}", summary::table(&cells_sum, &comps));
        print!("{}", summary::signature_table(&cells_sum));
        println!(
            "results: {}/summary.json, runs.jsonl, summary.csv, results.ktap",
            a.out.display()
        );
    }
    if interrupted {
        eprintln!(
            "pinvmm: campaign interrupted after {} of {total} VMs; rerun with --resume to finish",
            records.len()
        );
        return Ok(ExitCode::Interrupted);
    }
    // KTAP marks a cell with problems `not ok` either way; the exit code is about --expect.
    Ok(if met || !expected {
        ExitCode::Ok
    } else {
        ExitCode::ExpectationFailed
    })
}

fn rates_line(records: &[RunRecord]) -> String {
    let mut by: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        let e = by.entry(r.cell.as_str()).or_default();
        e.0 += u64::from(r.outcome == "terminated");
        e.1 += 1;
    }
    by.iter()
        .map(|(c, (t, n))| format!("{c} {t}/{n}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Writes summary.json, summary.csv and results.ktap.
pub fn write_outputs(dir: &Path, sum: &CampaignSummary, ktap: &str) -> Result<(), CampaignError> {
    let p = dir.join("summary.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(sum).expect("summary serializes") + "\n",
    )
    .map_err(io_err("cannot write", &p))?;
    let p = dir.join("summary.csv");
    std::fs::write(&p, plot::csv(&sum.cells)).map_err(io_err("cannot write", &p))?;
    let p = dir.join("results.ktap");
    std::fs::write(&p, ktap).map_err(io_err("cannot write", &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_interleaves_and_skips_done_runs() {
        let a = CampaignArgs {
            policies: vec![DrainPolicy::None, DrainPolicy::MlockDrain],
            backing: vec![Backing::Shmem],
            fault_in: vec![FaultIn::Touch],
            runs: 3,
            guest: "memtouch".into(),
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            cpus: "pinned".into(),
            before_run: None,
            mem: "8M".into(),
            noise: "lru:4".into(),
            prefill: 0,
            fault_cpu: None,
            pin_cpu: None,
            vm_type: VmType::Normal,
            jobs: 1,
            timeout: 10.0,
            inject_pin_failure_rate: Some(0.5),
            seed: 7,
            out: "/tmp/x".into(),
            resume: false,
            ktap: false,
            expect: None,
            quiet: true,
            trace: false,
        };
        let host = HostLimits {
            ram: 1 << 34,
            memlock: None,
            cap_ipc_lock: true,
            allowed_cpus: vec![0, 1],
            hugetlb: None,
            shmem_thp_mode: None,
        };
        let spec = spec_of(&a, &host).unwrap();
        assert_eq!(spec.noise, 4);
        let cs = cells(&a);
        let done: HashSet<String> = ["shmem/none#0".to_owned()].into();
        let jobs = plan(&cs, 3, &done, &spec);
        let keys: Vec<String> = jobs
            .iter()
            .map(|j| format!("{}#{}", j.cell.name, j.run))
            .collect();
        assert_eq!(
            keys,
            [
                "shmem/mlock-drain#0",
                "shmem/none#1",
                "shmem/mlock-drain#1",
                "shmem/none#2",
                "shmem/mlock-drain#2"
            ]
        );
        // Deterministic draws: the same plan twice injects at the same places.
        let again = plan(&cs, 3, &done, &spec);
        assert_eq!(
            jobs.iter().map(|j| j.inject_at).collect::<Vec<_>>(),
            again.iter().map(|j| j.inject_at).collect::<Vec<_>>()
        );
        let mut bad = a.clone();
        bad.runs = 0;
        assert!(spec_of(&bad, &host).is_err());
        bad = a.clone();
        bad.inject_pin_failure_rate = Some(1.5);
        assert!(spec_of(&bad, &host).unwrap_err().contains("1.5"));
        bad = a.clone();
        bad.vm_type = vmm::stage2::protected::VmType::Protected;
        assert!(spec_of(&bad, &host).unwrap_err().contains("inject"));
        bad.inject_pin_failure_rate = None;
        if cfg!(target_arch = "x86_64") {
            assert!(
                spec_of(&bad, &host).is_err(),
                "protected VMs are arm64-only"
            );
        }
        bad = a.clone();
        bad.expect = Some("retry==0".into());
        assert!(spec_of(&bad, &host).unwrap_err().contains("retry"));
    }

    #[test]
    fn injection_draws_have_the_asked_rate() {
        let n = 20_000;
        let hits = (0..n)
            .filter(|&r| injection(3, 0, r, Some(0.2)).is_some())
            .count() as f64;
        assert!((hits / n as f64 - 0.2).abs() < 0.015, "{hits}");
        assert!((0..1000).all(|r| injection(3, 1, r, None).is_none()));
        assert!(
            (0..1000)
                .filter_map(|r| injection(3, 1, r, Some(1.0)))
                .all(|n| (1..=64).contains(&n))
        );
    }
}
