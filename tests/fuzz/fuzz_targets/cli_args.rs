// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The clap argument structs the `pinvmm` binary uses that live in the vmm library
//! (`campaign`, `report`, `bench`, `gup-check` subcommands), parsed from arbitrary argv.
//! The top-level `Cli` and `run`'s `RunArgs` are private to `vmm/src/main.rs` and so are not
//! reachable from here. Invariant: parsing returns Ok or a clap error, never panics.
#![no_main]

use clap::{Args, Command, FromArgMatches};
use libfuzzer_sys::fuzz_target;

fn cli() -> Command {
    Command::new("pinvmm")
        .subcommand(lab::campaign::CampaignArgs::augment_args(Command::new(
            "campaign",
        )))
        .subcommand(lab::campaign::plot::ReportArgs::augment_args(Command::new(
            "report",
        )))
        .subcommand(lab::bench::BenchArgs::augment_args(Command::new("bench")))
        .subcommand(lab::gupcheck::GupCheckArgs::augment_args(Command::new(
            "gup-check",
        )))
}

fuzz_target!(|argv: Vec<String>| {
    let Ok(m) = cli().try_get_matches_from(std::iter::once("pinvmm".to_owned()).chain(argv)) else {
        return;
    };
    match m.subcommand() {
        Some(("campaign", sm)) => drop(lab::campaign::CampaignArgs::from_arg_matches(sm)),
        Some(("report", sm)) => drop(lab::campaign::plot::ReportArgs::from_arg_matches(sm)),
        Some(("bench", sm)) => drop(lab::bench::BenchArgs::from_arg_matches(sm)),
        Some(("gup-check", sm)) => drop(lab::gupcheck::GupCheckArgs::from_arg_matches(sm)),
        _ => {}
    }
});
