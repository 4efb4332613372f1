// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `pinvmm` command line (`pinvmm_cli::args::Cli`: every subcommand, `run`'s options
//! included), parsed from arbitrary argv. Invariant: parsing returns Ok or a clap error,
//! never panics.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use pinvmm_cli::args::Cli;

fuzz_target!(|argv: Vec<String>| {
    drop(Cli::try_parse_from(
        std::iter::once("pinvmm".to_owned()).chain(argv),
    ));
});
