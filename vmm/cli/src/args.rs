// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `pinvmm` command line: its subcommands and `run`'s options, and how they become a
//! validated [`VmConfig`] (with the options of a `--config` file merged in).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use guest::Payload;
use lab::args::named;
use vmm::applies::Opt;
use vmm::config::{SchedTuning, parse_size};
use vmm::linux::LinuxConfig;
use vmm::seccomp::SeccompMode;
use vmm::{
    Backing, CpuPlacement, DrainPolicy, ExitCode, FaultIn, HostLimits, InjectSpec, Stage2,
    TouchParams, VmConfig, VmType,
};

#[derive(Parser, Debug)]
#[command(
    name = "pinvmm",
    version,
    about = "A KVM VMM whose stage-2 faults are resolved by long-term pins of mlocked guest memory, as pKVM does",
    long_about = "pinvmm runs small VMs whose guest memory is mlock2(MLOCK_ONFAULT)ed and whose every stage-2 \
fault is resolved by a FOLL_LONGTERM pin of the page (io_uring fixed buffers), the way pKVM resolves a \
protected guest's faults. A failed pin terminates the VM, as on pKVM. Drain policies decide what runs \
between fault-in and pin.\n\nStart with `pinvmm probe`, then `pinvmm run --policy mlock-drain`.",
    after_help = ExitCode::TABLE
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one VM and report (human summary on stdout, JSON with --json).
    #[command(after_help = ExitCode::TABLE)]
    Run(RunArgs),
    /// Run many VMs per policy × backing cell and measure the VM-termination rate.
    #[command(after_help = ExitCode::TABLE)]
    Campaign(lab::campaign::CampaignArgs),
    /// Summarise, plot (SVG/PNG) and export (CSV) campaign results.
    Report(lab::campaign::plot::ReportArgs),
    /// Measure the stage-2 paths, drain policies, launch latency and RSS side by side.
    Bench(lab::bench::BenchArgs),
    /// Run many VMs in parallel in one process for a bounded time (every policy and backing in
    /// turn), then check nothing leaked: VmPin, VmLck, fds and RSS of the process, the host's
    /// MemAvailable, Shmem and Mlocked. Exit 0 when every VM completed and nothing leaked.
    #[command(after_help = ExitCode::TABLE)]
    Stress(lab::stress::StressArgs),
    /// Check (KTAP, no KVM needed) whether this kernel's long-term pins of mlocked shmem fail
    /// under the seed's conditions: exit 0 when every case passes or is skipped, 1 otherwise.
    GupCheck(lab::gupcheck::GupCheckArgs),
    /// Background LRU traffic from this process at a set rate on a set CPU (anonymous faults,
    /// page-cache reads or shmem writes), until SIGTERM: what other processes do to the
    /// loader CPU's per-CPU batches (docs/PKVM.md).
    LruTraffic(lab::traffic::TrafficArgs),
    /// Show what this host can do: KVM backend, userfaultfd, io_uring, drains, movable memory.
    Probe {
        /// Also write the findings as JSON to FILE ("-" for stdout).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

#[derive(Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    /// Read run options from FILE, a JSON object whose keys are these long option names and
    /// whose values are what the options take: {"mem": "64M", "policy": "mlock-drain",
    /// "vcpus": 2, "quiet": true, "inject": ["drain@3"]} (strings or numbers; true/false for
    /// flags; a list for --inject). Options on the command line override the file's (--inject
    /// adds to its list). `--print-config` writes such a file.
    #[arg(long, value_name = "FILE.json")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective run options (defaults, --config file and command line merged and
    /// checked) as a JSON config file on stdout, and exit without running a VM.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Guest payload: memtouch (write+verify every page), hello (serial line), spin (never ends),
    /// crash (undefined instruction); hostile ones: oob (touches memory outside RAM), garbage
    /// (garbage to every device register, unmapped ports and MMIO), flood (256 KiB on the
    /// serial port; 64 KiB are kept).
    #[arg(long, default_value = "memtouch", value_parser = parse_payload)]
    pub guest: Payload,
    /// Boot this Linux kernel instead of a payload (arm64: a raw Image; x86_64: a bzImage).
    ///
    /// pinvmm writes a device tree (arm64) or boot_params (x86_64), loads the kernel and
    /// initrd (arm64: with crosvm's system calls, pread straight into guest memory) through
    /// the mlocked view on its loader thread (pKVM-exact; the not-mlocked loader view for the
    /// stress models) and boots with the command
    /// line "<console arguments> <--cmdline>". Every stage-2 fault of the guest is resolved
    /// by a long-term pin under --policy, as for payloads. The workload of guest/linux/build
    /// reads pinvmm.fill=SIZE|N% pinvmm.seed=N pinvmm.forks=N pinvmm.tmpfs=SIZE from the
    /// command line and prints one line 'pinvmm-result: {...}', whose checksum the host
    /// recomputes: exit 0 only when that line is there and verifies, 4 when it is missing or
    /// wrong. Example:
    ///   guest/linux/build --arch arm64 --out initrd.cpio.gz
    ///   pinvmm run --kernel Image --initrd initrd.cpio.gz --mem 256M
    ///       --cmdline 'pinvmm.fill=96M' --policy mlock-drain --console
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["guest", "stride", "passes", "seed"])]
    pub kernel: Option<PathBuf>,
    /// Initramfs for --kernel (newc cpio, plain or compressed; guest/linux/build makes one).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel, after pinvmm's console arguments
    /// (e.g. "pinvmm.fill=128M pinvmm.seed=7 quiet").
    #[arg(long, value_name = "ARGS", requires = "kernel", default_value = "")]
    pub cmdline: String,
    /// Guest memory size (K, M, G suffixes; a multiple of 4 KiB, of 2 MiB for --backing hugetlb or shmem-thp).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub mem: u64,
    /// Number of vCPUs; memtouch splits its range between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub vcpus: u8,
    /// Guest memory backing.
    #[arg(long, value_parser = named::<Backing>(), default_value = "shmem")]
    pub backing: Backing,
    /// Drain policy run between fault-in and the long-term pin.
    #[arg(long, value_parser = named::<DrainPolicy>(), default_value = "none")]
    pub policy: DrainPolicy,
    /// Who faults a guest page into the mlocked pin view before its long-term pin. `pin`
    /// (default, pKVM-exact): the pin itself, on the CPU the vCPU runs on; the pages the VMM
    /// wrote (kernel, initrd, device tree, payload, --prefill) were written through the
    /// mlocked view by the loader thread on --fault-cpu, as crosvm's loader does. `touch` is
    /// a stress model: every guest page is first faulted into the mlocked view on
    /// --fault-cpu (a read, with fault-around) and pinned on --pin-cpu, and images and
    /// --prefill go through the page cache first; it opens the kernel's window far more
    /// often than a real pKVM VMM (docs/DESIGN.md, vocabulary).
    #[arg(long, value_parser = named::<FaultIn>(), default_value = "pin")]
    pub fault_in: FaultIn,
    /// Stage-2 path: pin (userfaultfd + pins), uffd (no pins), kernel (KVM's own), eager (pin all first).
    #[arg(long, value_parser = named::<Stage2>(), default_value = "pin")]
    stage2: Stage2,
    /// VM type. `protected` (arm64, kvm-arm.mode=protected, Linux 7.x): a real pKVM protected VM
    /// whose stage-2 faults KVM resolves by long-term pins itself. No userfaultfd (it cannot be
    /// combined with protected VMs), so --stage2, --backing anon, --fault-in touch,
    /// --noise, --fault-ahead and --inject are refused; a loader thread on --fault-cpu writes
    /// the payload, or the --kernel/--initrd/device tree with crosvm's system calls, and the
    /// --prefill pages through the mlocked mapping KVM pins, runs the policy's drain
    /// (mlock-drain: that CPU, lru-add-drain: all CPUs), then the vCPU runs on --pin-cpu;
    /// KVM_RUN = EFAULT terminates the VM (exit 5) unless --policy retry runs it again.
    #[arg(long, value_parser = named::<VmType>(), default_value = "normal")]
    pub vm_type: VmType,
    /// Thread placement: `pinned` (default: the loader and fault-in thread on --fault-cpu, the
    /// pin thread and the vCPU on --pin-cpu) or `free` (no thread is placed: the scheduler
    /// decides where the loader, the vCPU and the resolver run, as crosvm runs without
    /// --cpu-affinity).
    #[arg(long, default_value = "pinned", value_parser = ["pinned", "free"], conflicts_with_all = ["fault_cpu", "pin_cpu"])]
    pub cpus: String,
    /// CPU of the loader and fault-in thread (default: the first usable CPU).
    #[arg(long, value_name = "N")]
    pub fault_cpu: Option<usize>,
    /// CPU of the pin thread, or `same` (default: the second usable CPU, so fault-in and pin run on different CPUs).
    #[arg(long, value_name = "N|same")]
    pub pin_cpu: Option<String>,
    /// Fresh not-mlocked shmem pages written on the fault CPU between fault-in and pin (LRU noise).
    #[arg(long, default_value_t = 0, value_name = "PAGES")]
    pub noise: u32,
    /// Also fault in, pin and map up to K not-yet-touched pages after each faulting page, on the same event (0 = one pin per faulting page, as pKVM; K > 0 changes what the pin experiment measures: with --fault-in pin the report's model is `pkvm-placement+fault-aheadK`, not `pkvm-exact`).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub fault_ahead: u32,
    /// Percent of guest memory the loader writes before boot (0-100): through the mlocked
    /// view on the loader thread (pKVM-exact), or the not-mlocked loader view (stress models).
    #[arg(long, default_value_t = 0, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub prefill: u8,
    /// memtouch: touch every N-th page.
    #[arg(long, default_value_t = 1, value_name = "PAGES")]
    pub stride: u64,
    /// memtouch: write passes over the range.
    #[arg(long, default_value_t = 1)]
    pub passes: u64,
    /// memtouch: seed mixed into every value.
    #[arg(long, default_value_t = TouchParams::default().seed)]
    pub seed: u64,
    /// Stop the VM after this many seconds (outcome `timeout`; default 60, 600 with --kernel).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Make a host call fail: the NTH call (default 1) at SITE fails with ERRNO (a name or
    /// number; default: one the call really returns) instead of being made, and the VM takes
    /// the real error path. Repeatable. Sites: uffd-read, uffd-copy (anon), uffd-zeropage (anon
    /// with --fault-in pin), uffd-continue (shmem), uffd-wake (anon), pin-register, pin-update
    /// (the long-term pin: exit 5, VM terminated), mlock, drain (mlock-drain, lru-add-drain,
    /// retry after a failed pin), kvm-run. All but pin-update end the VM as a VMM error (exit 1);
    /// the JSON report names the site, call, errno and GPA. See docs/RELIABILITY.md.
    #[arg(long, value_name = "SITE[@NTH][:ERRNO]")]
    pub inject: Vec<InjectSpec>,
    /// Force the N-th pin attempt to fail (optionally with ERRNO, default ENOMEM): tests the
    /// termination path. Same as --inject pin-update@N:ERRNO.
    #[arg(long, value_name = "N[:ERRNO]", value_parser = InjectSpec::parse_pin_failure)]
    #[serde(skip)]
    pub inject_pin_failure: Option<InjectSpec>,
    /// Write the JSON report to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Echo the guest's serial console to stderr as it arrives.
    #[arg(long)]
    pub console: bool,
    /// Print nothing on stdout but errors (use with --json).
    #[arg(long, short)]
    pub quiet: bool,
    /// Install no seccomp filters (default: every vCPU, resolver and, after setup, the main thread).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Explain failed pins further (docs/FAILURES.md): record the kernel's migrate:
    /// trace events of this VM's own threads in a private tracefs instance (needs root and a
    /// mounted tracefs), and read each folio's state just before its pin. Without it a failed
    /// pin is still explained from the folio's state after the failure and the page's path.
    #[arg(long)]
    pub trace: bool,
    /// The longest a resolver thread polls for a hand-off from the other CPU before it sleeps,
    /// in µs (0: never poll). It polls only while nothing else wants its CPU.
    #[arg(long, value_name = "US", default_value_t = SchedTuning::default().spin_us)]
    pub spin_us: u32,
    /// vCPU and resolver threads keep the scheduler's default time slice (default: they ask for
    /// 0.1 ms slices, so that their wake-ups preempt a busy CPU's running task; Linux 6.12+).
    #[arg(long)]
    pub no_short_slice: bool,
}

fn parse_payload(s: &str) -> Result<Payload, String> {
    Payload::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Payload::ALL.iter().map(|p| p.name()).collect();
        format!("unknown guest '{s}' (choose from: {})", names.join(", "))
    })
}

pub fn build_config(a: &RunArgs, host: &HostLimits) -> Result<VmConfig, String> {
    let def = host.default_placement();
    let fault_cpu = a.fault_cpu.unwrap_or(def.fault_cpu);
    let pin_cpu = match a.pin_cpu.as_deref() {
        None => {
            if a.fault_cpu.is_some() {
                host.allowed_cpus
                    .iter()
                    .copied()
                    .find(|&c| c != fault_cpu)
                    .unwrap_or(fault_cpu)
            } else {
                def.pin_cpu
            }
        }
        Some("same") => fault_cpu,
        Some(n) => n
            .parse()
            .map_err(|_| format!("--pin-cpu '{n}' is neither a CPU number nor 'same'"))?,
    };
    let timeout = a
        .timeout
        .unwrap_or(if a.kernel.is_some() { 600.0 } else { 60.0 });
    if !timeout.is_finite() || timeout <= 0.0 || timeout > 86_400.0 {
        return Err(format!(
            "--timeout {timeout} is out of range: use more than 0 and at most 86400 seconds"
        ));
    }
    let placement = CpuPlacement {
        fault_cpu,
        pin_cpu,
        free: a.cpus == "free",
    };
    let mut c = VmConfig::new(a.guest, a.mem, placement);
    c.vcpus = a.vcpus;
    c.backing = a.backing;
    c.policy = a.policy;
    c.fault_in = a.fault_in;
    c.stage2 = a.stage2;
    c.noise_pages = a.noise;
    c.fault_ahead = a.fault_ahead;
    c.prefill_pct = a.prefill;
    c.touch = TouchParams {
        stride_pages: a.stride,
        passes: a.passes,
        seed: a.seed,
    };
    c.timeout = Duration::from_secs_f64(timeout);
    c.inject = a
        .inject
        .iter()
        .chain(&a.inject_pin_failure)
        .copied()
        .collect();
    c.vm_type = a.vm_type;
    c.linux = a.kernel.as_ref().map(|k| LinuxConfig {
        kernel: k.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
    });
    c.echo_console = a.console;
    c.trace = a.trace;
    c.sched = SchedTuning {
        spin_us: a.spin_us,
        short_slice: !a.no_short_slice,
    };
    c.seccomp = if a.no_seccomp {
        SeccompMode::Off
    } else {
        SeccompMode::All
    };
    c.validate(host).map_err(|e| e.to_string())?;
    // The CPU options' defaults are chosen here: only here is it known they were given.
    let cpus = [
        (a.fault_cpu.is_some(), Opt::FaultCpu),
        (a.pin_cpu.is_some(), Opt::PinCpu),
    ];
    let given: Vec<Opt> = cpus.iter().filter(|(g, _)| *g).map(|(_, o)| *o).collect();
    c.check_applies(&given).map_err(|e| e.to_string())?;
    Ok(c)
}

/// `--config FILE`: parses the file's options, then this command line's again after them.
pub fn with_config_file(a: RunArgs) -> Result<RunArgs, String> {
    let Some(path) = a.config.as_ref() else {
        return Ok(a);
    };
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {name}: cannot read it: {e}"))?;
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run is a subcommand");
    let mut words: Vec<std::ffi::OsString> = vec!["pinvmm".into(), "run".into()];
    words.extend(crate::config_file::args_from_json(run, &name, &text)?);
    // This command line (after "pinvmm run"), parsed last: its options win.
    words.extend(std::env::args_os().skip(2));
    let m = Cli::command()
        .args_override_self(true)
        .try_get_matches_from(words)
        .map_err(|e| format!("config {name}: {}", e.to_string().trim_end()))?;
    match Cli::from_arg_matches(&m).map_err(|e| e.to_string())?.cmd {
        Command::Run(a) => Ok(a),
        _ => Err("internal: the merged command line is not `run`".into()),
    }
}
