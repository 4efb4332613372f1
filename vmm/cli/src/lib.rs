// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `pinvmm` command line, as a library (`main.rs` only parses and exits): the
//! subcommands and `run`'s options and how they become a `VmConfig` ([`args`]), `--config`
//! files ([`config_file`]), and what each subcommand does down to its exit code
//! ([`commands`]). The `vmm` library below knows no argument parser.

pub mod args;
pub mod commands;
pub mod config_file;
