// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm`: parse the command line, run the subcommand, exit with its code (README.md,
//! `pinvmm --help`).

use std::process::ExitCode as ProcessExitCode;

use clap::Parser;
use pinvmm_cli::args::Cli;
use pinvmm_cli::commands;
use vmm::ExitCode;

fn main() -> ProcessExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout and exit 0; a bad option is bad input.
            let code = if e.use_stderr() {
                ExitCode::BadInput
            } else {
                ExitCode::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    commands::dispatch(cli.cmd)
}
