// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line parsing of the `vmm` library's named choices (`--backing`, `--policy`, ...):
//! the library names its values ([`Named`]) and knows no argument parser; this turns them into
//! clap value parsers, shown in help exactly as a `clap::ValueEnum` would show them.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use vmm::names::Named;

/// The value parser of a [`Named`] enum: its names are the possible values, each described by
/// its doc comment (first paragraph, without the final period, as clap's derive does).
pub fn named<T: Named>() -> impl TypedValueParser<Value = T> {
    let values = T::VALUES.iter().map(|v| {
        let help = v.help();
        let help = match help.strip_suffix('.') {
            Some(h) if !h.ends_with('.') => h.to_owned(),
            _ => help,
        };
        PossibleValue::new(v.name()).help(help)
    });
    PossibleValuesParser::new(values).map(|name| {
        T::from_name(&name).expect("clap accepts only the possible values, which are the names")
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use vmm::{Backing, DrainPolicy};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long, value_parser = named::<DrainPolicy>(), default_value = "none")]
        policy: DrainPolicy,
        #[arg(long, value_parser = named::<Backing>(), value_delimiter = ',')]
        backings: Vec<Backing>,
    }

    #[test]
    fn names_parse_and_others_are_refused_with_the_choices() {
        let c = Cli::try_parse_from(["t", "--policy", "mlock-drain", "--backings", "anon,shmem"])
            .unwrap();
        assert_eq!(c.policy, DrainPolicy::MlockDrain);
        assert_eq!(c.backings, [Backing::Anon, Backing::Shmem]);
        assert_eq!(
            Cli::try_parse_from(["t"]).unwrap().policy,
            DrainPolicy::None
        );
        let e = Cli::try_parse_from(["t", "--policy", "drain-all"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("none, lru-add-drain, mlock-drain, retry"), "{e}");
    }
}
