// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm_cli::config_file::args_from_json` (`pinvmm run --config FILE.json`) on arbitrary text,
//! against a real option set (`pinvmm stress`'s: durations, sizes, comma lists of enums, a
//! ranged integer, a flag, a path): never panics, every error names the file, and whatever it
//! accepts is a command line the same options parse (the file is checked field by field
//! exactly as the command line is).
#![no_main]

use clap::{Args, Command};
use libfuzzer_sys::fuzz_target;
use pinvmm_cli::config_file::args_from_json;
use lab::stress::StressArgs;

fuzz_target!(|text: &str| {
    let cmd = StressArgs::augment_args(Command::new("stress"));
    match args_from_json(&cmd, "fuzz.json", text) {
        Ok(words) => {
            let argv = std::iter::once("stress".into()).chain(words);
            if let Err(e) = cmd.clone().try_get_matches_from(argv) {
                panic!("{text:?} was accepted but does not parse: {e}");
            }
        }
        Err(e) => assert!(e.starts_with("config fuzz.json: "), "{text:?}: {e}"),
    }
});
