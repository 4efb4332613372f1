// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm bench` options.

use std::path::PathBuf;

use serde::Serialize;
use vmm::Backing;
use vmm::config::parse_size;

use crate::args::named;

/// Sections of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Touch,
    Drain,
    Launch,
    Rss,
    Qemu,
    /// `campaign --jobs N` against `--jobs 1`: VMs per minute.
    Jobs,
}

/// The host's online CPUs (at least 1).
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl BenchArgs {
    /// `--load`, or one busy thread per CPU.
    pub fn load(&self) -> usize {
        self.load.unwrap_or_else(online_cpus)
    }

    /// `--jobs`, or one VM per CPU.
    pub fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(online_cpus).max(1)
    }
}

/// `pinvmm bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Guest memory of the first-touch VMs.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub mem: u64,
    /// Repetitions of every row, interleaved round by round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reps: u32,
    /// Busy threads (CPU-bound, in the bench's process) run beside a second set of touch rows:
    /// the baselines and both models' pinning path under load, each against its quiet row
    /// (default: one per CPU, 2x oversubscription with the VM's own threads; 0 = no loaded
    /// rows).
    #[arg(long, value_name = "N")]
    pub load: Option<usize>,
    /// Concurrent VMs of the jobs section's `campaign --jobs N`, compared with `--jobs 1`
    /// (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// VMs per policy (none, mlock-drain) of each campaign of the jobs section.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub jobs_runs: u32,
    /// Guest memory of the jobs section's memtouch VMs.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub jobs_mem: u64,
    /// Fault-ahead values (pages) for the extra pinning rows; 0 = no extra rows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "15,63",
        value_name = "K,..."
    )]
    pub fault_ahead: Vec<u32>,
    /// Back-to-back VMs per round in the launch section.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub launches: u32,
    /// Guest memory of the launch VMs.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub launch_mem: u64,
    /// Guest memory of the largest RSS VM (the VMM's per-page bookkeeping shows there).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub rss_mem: u64,
    /// Memory backings of the first-touch rows: shmem (4 KiB granule; always measured: the
    /// baselines), hugetlb and shmem-thp (2 MiB granules). As root, the bench reserves the
    /// hugetlb pages (vm.nr_hugepages) and allows shmem THP (shmem_enabled=advise) for the run
    /// and puts both back at the end; otherwise the host must offer them (see `pinvmm probe`)
    /// or those rows are skipped, and the output says so.
    #[arg(
        long,
        value_parser = named::<Backing>(),
        value_delimiter = ',',
        default_value = "shmem,hugetlb,shmem-thp",
        value_name = "BACKING,..."
    )]
    pub backings: Vec<Backing>,
    /// The QEMU binary of the `qemu` section (QEMU 10 from bookworm-backports, as the boards
    /// take it: `guest/linux/qemu-check --arch amd64 --setup` as root). When it is missing the
    /// section says so and measures nothing (exit 3 with --only qemu).
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
    pub qemu: PathBuf,
    /// Run only these sections (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Write every sample and summary as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the first-touch rows (and the baseline's, with --baseline) as an SVG bar chart.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// A previous `--json` output: its first-touch rows are shown next to this run's
    /// (before/after of a change; measure both on the same host).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Print progress to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}
