// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `pinvmm run --config FILE.json`: run options from a JSON object.
//!
//! The file's keys are the long option names of `pinvmm run` (`"mem"`, `"policy"`,
//! `"inject"`, ...; `_` may stand for `-`), so the file and the command line are one language
//! and an option added to `run` is a config field at once. Each field is turned back into the
//! command-line words it stands for and checked with that option's own parser, so a bad field
//! gets the same check as a bad option, in a message that names the file, the field and the
//! value. Options on the command line are parsed after the file's and override them (list
//! options such as `inject` add to the file's). `pinvmm run --print-config` writes such a file.
//!
//! Hand-written rather than a `#[derive(Deserialize)]` struct: serde's messages name the
//! line and column but not the field ("invalid type: string \"two\", expected u8"), and a second
//! description of every option would drift from clap's.

use std::ffi::OsString;

use clap::{ArgAction, Command};
use serde_json::Value;

/// Options a config file cannot set (they are about reading or writing config files).
const NOT_IN_FILES: &[&str] = &["config", "print-config", "help", "version"];

/// Turns the JSON object `text` (read from `file`) into the words of `run`'s command line
/// (`cmd` is the `run` subcommand), each value checked by its option's parser.
pub fn args_from_json(cmd: &Command, file: &str, text: &str) -> Result<Vec<OsString>, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("config {file}: not valid JSON: {e}"))?;
    let Value::Object(fields) = v else {
        return Err(format!(
            "config {file}: must be a JSON object of run options, like {{\"mem\": \"64M\", \"policy\": \"mlock-drain\"}}; it is {}",
            kind(&v)
        ));
    };
    // Each field is checked alone, so relations between options (--initrd requires --kernel)
    // are left to the parse of everything together.
    let none = || clap::builder::Resettable::<clap::Id>::Reset;
    let alone = cmd.clone().no_binary_name(true).mut_args(|a| {
        a.requires(none())
            .conflicts_with(none())
            .required_unless_present(none())
            .required(false)
    });
    let mut words = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for (key, value) in &fields {
        let name = key.replace('_', "-");
        if let Some(other) = seen.insert(name.clone(), key) {
            return Err(format!(
                "config {file}: fields \"{other}\" and \"{key}\" are the same option: keep one"
            ));
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()))
            .filter(|_| !NOT_IN_FILES.contains(&name.as_str()))
            .ok_or_else(|| {
                format!(
                    "config {file}: unknown field \"{key}\" (fields are the long options of `pinvmm run`: {})",
                    known(cmd).join(", ")
                )
            })?;
        let flag = format!("--{name}");
        let bad = |want: &str| {
            format!(
                "config {file}: field \"{key}\" must be {want}, not {} ({value})",
                kind(value)
            )
        };
        let values: Vec<String> = match (arg.get_action(), value) {
            (_, Value::Null) => Vec::new(), // the option's default
            (ArgAction::SetTrue, Value::Bool(b)) => {
                if *b {
                    words.push(flag.clone().into());
                }
                continue;
            }
            (ArgAction::SetTrue, _) => return Err(bad("true or false")),
            (ArgAction::Append, Value::Array(items)) => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| bad("a list of strings")))
                .collect::<Result<_, _>>()?,
            (ArgAction::Append, v) => {
                vec![scalar(v).ok_or_else(|| bad("a string or a list of strings"))?]
            }
            (_, v) => vec![scalar(v).ok_or_else(|| bad("a string or a number"))?],
        };
        for s in values {
            // The option alone through `run`'s own parser: the same check as on the command line.
            alone
                .clone()
                .try_get_matches_from([flag.as_str(), s.as_str()])
                .map_err(|e| {
                    let why = first_line(&e.to_string());
                    format!("config {file}: field \"{key}\" = {value}: {why}")
                })?;
            words.push(flag.clone().into());
            words.push(s.into());
        }
    }
    Ok(words)
}

/// A string or number as its command-line word.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The fields a file may have.
fn known(cmd: &Command) -> Vec<&str> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|n| !NOT_IN_FILES.contains(n))
        .collect()
}

/// clap's error without its "error: " prefix and usage footer (the accepted values stay).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    let mut out = line.strip_prefix("error: ").unwrap_or(line).to_owned();
    if let Some(values) = s.lines().find(|l| l.contains("[possible values:")) {
        out.push(' ');
        out.push_str(values.trim());
    }
    out
}

/// The effective run options as a config file: `options` is the parsed `run` arguments
/// serialized (field names in kebab case); `null`s and the fields files cannot set go.
pub fn to_json(options: Value) -> String {
    let mut v = options;
    if let Value::Object(m) = &mut v {
        m.retain(|k, val| !val.is_null() && !NOT_IN_FILES.contains(&k.as_str()));
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use clap::{Arg, value_parser};

    use super::*;

    fn cmd() -> Command {
        Command::new("run")
            .arg(
                Arg::new("vcpus")
                    .long("vcpus")
                    .value_parser(value_parser!(u8).range(1..=64)),
            )
            .arg(
                Arg::new("mem")
                    .long("mem")
                    .value_parser(vmm::config::parse_size),
            )
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
            .arg(Arg::new("inject").long("inject").action(ArgAction::Append))
            .arg(Arg::new("kernel").long("kernel"))
            .arg(Arg::new("initrd").long("initrd").requires("kernel"))
            .arg(Arg::new("config").long("config"))
    }

    fn words(text: &str) -> Result<Vec<String>, String> {
        args_from_json(&cmd(), "f.json", text)
            .map(|w| w.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn fields_become_checked_options() {
        assert_eq!(
            words(r#"{"vcpus": 2, "mem": "8M", "quiet": true, "inject": ["a", "b"]}"#).unwrap(),
            [
                "--inject", "a", "--inject", "b", "--mem", "8M", "--quiet", "--vcpus", "2"
            ]
        );
        assert_eq!(
            words(r#"{"quiet": false, "mem": null, "inject": "x"}"#).unwrap(),
            ["--inject", "x"]
        );
        // Relations between options are checked when everything is parsed together.
        assert_eq!(words(r#"{"initrd": "i"}"#).unwrap(), ["--initrd", "i"]);
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let e = words(r#"{"vcpus": "two"}"#).unwrap_err();
        assert!(
            e.contains("f.json") && e.contains("\"vcpus\"") && e.contains("two"),
            "{e}"
        );
        let e = words(r#"{"vcpus": 0}"#).unwrap_err();
        assert!(e.contains("\"vcpus\" = 0"), "{e}");
        let e = words(r#"{"mem": true}"#).unwrap_err();
        assert!(
            e.contains("\"mem\" must be a string or a number, not a boolean"),
            "{e}"
        );
        let e = words(r#"{"quiet": "yes"}"#).unwrap_err();
        assert!(e.contains("\"quiet\" must be true or false"), "{e}");
        let e = words(r#"{"inject": [1, {}]}"#).unwrap_err();
        assert!(e.contains("\"inject\" must be a list of strings"), "{e}");
        let e = words(r#"{"frobnicate": 1}"#).unwrap_err();
        assert!(
            e.contains("unknown field \"frobnicate\"") && e.contains("vcpus"),
            "{e}"
        );
        let c = Command::new("run").arg(Arg::new("fa").long("fault-ahead"));
        let e =
            args_from_json(&c, "f.json", r#"{"fault_ahead": 1, "fault-ahead": 2}"#).unwrap_err();
        assert!(e.contains("same option"), "{e}");
        let e = words(r#"{"config": "other.json"}"#).unwrap_err();
        assert!(e.contains("unknown field \"config\""), "{e}");
        let e = words(r#"{"vcpus": 2,"#).unwrap_err();
        assert!(e.contains("not valid JSON") && e.contains("line 1"), "{e}");
        let e = words("[1, 2]").unwrap_err();
        assert!(
            e.contains("must be a JSON object") && e.contains("a list"),
            "{e}"
        );
    }

    #[test]
    fn printed_config_drops_nulls_and_file_options() {
        let v = serde_json::json!({"mem": 8, "config": "x", "fault-cpu": null});
        assert_eq!(to_json(v), "{\n  \"mem\": 8\n}\n");
    }
}
