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
    /// The QEMU binary of the `qemu` section (Debian: apt-get install qemu-system-x86). When it
    /// is missing the section says so and measures nothing (exit 3 with --only qemu).
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
