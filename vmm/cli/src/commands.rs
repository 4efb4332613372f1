// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What each `pinvmm` subcommand does with its arguments, down to the exit code.

use std::path::PathBuf;

use vmm::{ExitCode, HostLimits, Report};

use crate::args::{Command, RunArgs, build_config, with_config_file};

/// Runs a parsed command line and gives the process exit code.
pub fn dispatch(cmd: Command) -> std::process::ExitCode {
    let code = match cmd {
        Command::Run(a) => run(a),
        Command::Campaign(a) => match lab::campaign::run(&a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("pinvmm: {e}");
                e.exit_code()
            }
        },
        Command::Report(a) => lab::campaign::plot::report_main(&a),
        // kselftest's exit codes (0 pass, 1 fail, 4 all skipped), not pinvmm's table.
        Command::GupCheck(a) => return lab::gupcheck::main(&a).into(),
        Command::Bench(a) => lab::bench::main(&a),
        Command::Stress(a) => lab::stress::main(&a),
        Command::LruTraffic(a) => lab::traffic::main(&a),
        Command::Probe { json } => probe(json),
    };
    code.into()
}

/// `pinvmm probe`.
fn probe(json: Option<PathBuf>) -> ExitCode {
    let p = lab::probe::probe();
    print!("{}", p.human());
    if let Some(path) = json
        && let Err(e) = write_json(&path, &p)
    {
        eprintln!("pinvmm: {e}");
        return ExitCode::BadInput;
    }
    if p.can_run {
        ExitCode::Ok
    } else {
        ExitCode::HostUnsupported
    }
}

pub fn write_json<T: serde::Serialize>(path: &PathBuf, v: &T) -> Result<(), String> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| format!("cannot encode the report: {e}"))?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `pinvmm run`: options -> a validated VmConfig -> build -> run -> report.
fn run(a: RunArgs) -> ExitCode {
    let a = match with_config_file(a) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pinvmm: bad input: {e}");
            return ExitCode::BadInput;
        }
    };
    let host = HostLimits::probe();
    let cfg = match build_config(&a, &host) {
        Ok(c) => c,
        Err(e) => {
            let from = a.config.as_ref().map_or_else(String::new, |p| {
                format!(
                    " (options from config {} and the command line)",
                    p.display()
                )
            });
            eprintln!("pinvmm: bad input: {e}{from}");
            return ExitCode::BadInput;
        }
    };
    if a.print_config {
        // --inject-pin-failure is printed as the --inject it stands for.
        let mut a = a;
        a.inject = cfg.inject.clone();
        return match serde_json::to_value(&a) {
            Ok(v) => {
                print!("{}", crate::config_file::to_json(v));
                ExitCode::Ok
            }
            Err(e) => {
                eprintln!("pinvmm: cannot encode the config: {e}");
                ExitCode::VmmError
            }
        };
    }
    // Check where the report goes before spending time on the VM.
    if let Some(dir) = a
        .json
        .as_ref()
        .filter(|p| p.as_os_str() != "-")
        .and_then(|p| p.parent())
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        eprintln!(
            "pinvmm: bad input: --json: directory {} does not exist",
            dir.display()
        );
        return ExitCode::BadInput;
    }
    let report = match vmm::build(&cfg).map(|vm| Report::from(vm.run())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinvmm: {e}");
            let failed = vmm::report::SetupFailureReport::new(&cfg, &e);
            if let Some(p) = &a.json
                && let Err(e) = write_json(p, &failed)
            {
                eprintln!("pinvmm: {e}");
            }
            return failed.exit_code();
        }
    };
    if !a.quiet {
        print!("{}", report.human());
    }
    if let Some(p) = &a.json
        && let Err(e) = write_json(p, &report)
    {
        eprintln!("pinvmm: {e}");
        return ExitCode::BadInput;
    }
    report.outcome.exit_code()
}
