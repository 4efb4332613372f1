// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Linux guest workload's contract with the host: its parameters (from the guest kernel's
//! command line), the memory pattern it writes, the checksum a correct run reports, and the
//! one result line it prints (`pinvmm-result: {...}`).
//!
//! The host recomputes [`expected_checksum`] from the line's `fill_bytes` and `seed` instead of
//! trusting the guest's `"status":"ok"` (like memtouch's checksum for bare payloads).
//! The program itself is `src/bin/pinvmm-workload.rs`; the initramfs is built by
//! `guest/linux/build`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What starts the result line; the JSON object follows after one space.
pub const RESULT_MARKER: &str = "pinvmm-result:";

/// Default share of MemAvailable the fill takes when `pinvmm.fill` is absent.
pub const DEFAULT_FILL_PERCENT: u64 = 60;
/// Default number of child processes.
pub const DEFAULT_FORKS: u64 = 4;
/// Default size of the tmpfs file churned through the page cache.
pub const DEFAULT_TMPFS_BYTES: u64 = 16 << 20;
/// Write / read back / verify / truncate rounds over the tmpfs file.
pub const TMPFS_ROUNDS: u64 = 4;
/// Upper bound of one child's private memory (it is also at most 1/20 of MemAvailable).
pub const MAX_CHILD_BYTES: u64 = 16 << 20;

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64-bit word the workload writes at word `index` of a region filled with `seed`.
pub fn pattern_word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// The seed of child process `child` (0-based), distinct from the parent's and each other's.
pub fn child_seed(seed: u64, child: u64) -> u64 {
    mix(seed ^ mix(child + 1))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An order-sensitive running checksum over 64-bit words (FNV-1a over whole words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(FNV_OFFSET)
    }
}

impl Checksum {
    pub fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(FNV_PRIME);
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

/// The checksum a correct run reports for a fill of `fill_bytes` (whole 64-bit words; a
/// trailing partial word is not part of the fill) written with `seed`.
pub fn expected_checksum(fill_bytes: u64, seed: u64) -> u64 {
    let mut sum = Checksum::default();
    for i in 0..fill_bytes / 8 {
        sum.add(pattern_word(seed, i));
    }
    sum.value()
}

/// Errors of the workload's parameters and of the result line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error(
        "{key}={value}: not a size (use bytes or a K/M/G suffix, e.g. 64M; pinvmm.fill also takes a percentage of MemAvailable, e.g. 60%)"
    )]
    BadSize { key: String, value: String },
    #[error("{key}={value}: not a number")]
    BadNumber { key: String, value: String },
    #[error("{key}={value}: out of range ({range})")]
    OutOfRange {
        key: String,
        value: String,
        range: &'static str,
    },
    #[error(
        "unknown workload parameter {key} (known: pinvmm.fill, pinvmm.seed, pinvmm.forks, pinvmm.tmpfs)"
    )]
    UnknownKey { key: String },
    #[error("no '{RESULT_MARKER}' in the line")]
    NoMarker,
    #[error("the result line's JSON is malformed: {0}")]
    Json(String),
    #[error(
        "checksum {got:#018x} differs from the expected {want:#018x} for fill_bytes={fill_bytes} seed={seed}"
    )]
    ChecksumMismatch {
        got: u64,
        want: u64,
        fill_bytes: u64,
        seed: u64,
    },
    #[error("the guest workload reported status {status} with {errors} errors")]
    GuestFailed { status: Status, errors: u64 },
}

/// Parses a size: plain bytes or a K/M/G/T suffix (powers of 1024), e.g. `4096`, `16M`, `1G`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 10),
        (i, 'm' | 'M') => (&text[..i], 20),
        (i, 'g' | 'G') => (&text[..i], 30),
        (i, 't' | 'T') => (&text[..i], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// How much memory the fill takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillSize {
    Bytes(u64),
    /// A percentage of MemAvailable at start.
    PercentOfAvailable(u64),
}

impl FillSize {
    /// Bytes to fill given MemAvailable, rounded down to whole pages (and at least one page).
    pub fn resolve(self, mem_available: u64) -> u64 {
        let bytes = match self {
            FillSize::Bytes(b) => b,
            FillSize::PercentOfAvailable(p) => mem_available / 100 * p,
        };
        (bytes & !4095).max(4096)
    }
}

/// The workload's parameters, from the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub fill: FillSize,
    pub seed: u64,
    pub forks: u64,
    pub tmpfs_bytes: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fill: FillSize::PercentOfAvailable(DEFAULT_FILL_PERCENT),
            seed: 1,
            forks: DEFAULT_FORKS,
            tmpfs_bytes: DEFAULT_TMPFS_BYTES,
        }
    }
}

impl Params {
    /// Reads `pinvmm.fill=SIZE|N% pinvmm.seed=N pinvmm.forks=N pinvmm.tmpfs=SIZE` from a kernel
    /// command line; other words (the kernel's own parameters) are ignored, unknown `pinvmm.*`
    /// keys are errors (a typo must not silently run the defaults).
    pub fn from_cmdline(cmdline: &str) -> Result<Params, WorkloadError> {
        let mut p = Params::default();
        for word in cmdline.split_whitespace() {
            let Some(rest) = word.strip_prefix("pinvmm.") else {
                continue;
            };
            let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
            let key = format!("pinvmm.{name}");
            let bad_size = || WorkloadError::BadSize {
                key: key.clone(),
                value: value.to_string(),
            };
            let number = || {
                parse_number(value).ok_or_else(|| WorkloadError::BadNumber {
                    key: key.clone(),
                    value: value.to_string(),
                })
            };
            let out_of_range = |range| WorkloadError::OutOfRange {
                key: key.clone(),
                value: value.to_string(),
                range,
            };
            match name {
                "fill" => {
                    p.fill = match value.strip_suffix('%') {
                        Some(pct) => {
                            let pct: u64 = pct.parse().map_err(|_| bad_size())?;
                            if !(1..=95).contains(&pct) {
                                return Err(out_of_range("1% to 95%"));
                            }
                            FillSize::PercentOfAvailable(pct)
                        }
                        None => FillSize::Bytes(parse_size(value).ok_or_else(bad_size)?),
                    }
                }
                "seed" => p.seed = number()?,
                "forks" => {
                    p.forks = number()?;
                    if p.forks > 64 {
                        return Err(out_of_range("0 to 64"));
                    }
                }
                "tmpfs" => p.tmpfs_bytes = parse_size(value).ok_or_else(bad_size)?,
                _ => return Err(WorkloadError::UnknownKey { key }),
            }
        }
        Ok(p)
    }
}

/// Decimal or 0x-prefixed hexadecimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The workload's verdict about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        })
    }
}

/// The one line the workload prints:
/// `pinvmm-result: {"status":"ok","fill_bytes":N,"seed":N,"checksum":"0x<16 hex>",
/// "tmpfs_bytes":N,"forks":N,"errors":N,"elapsed_ms":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultLine {
    pub status: Status,
    /// Bytes filled and verified (whole pages).
    pub fill_bytes: u64,
    pub seed: u64,
    /// [`Checksum`] over the fill as read back in the last verify pass.
    #[serde(serialize_with = "hex_ser", deserialize_with = "hex_de")]
    pub checksum: u64,
    /// Size of the tmpfs file in each of the [`TMPFS_ROUNDS`] rounds.
    pub tmpfs_bytes: u64,
    /// Child processes that ran to the end.
    pub forks: u64,
    /// Words that read back wrong, failed children, failed I/O: 0 in a good run.
    pub errors: u64,
    /// Wall time of the workload, start to result.
    pub elapsed_ms: u64,
}

fn hex_ser<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#018x}"))
}

fn hex_de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    text.strip_prefix("0x")
        .filter(|h| h.len() == 16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("checksum {text:?} is not 0x + 16 hex digits"))
        })
}

impl ResultLine {
    /// Parses a console line holding the result. The marker may follow a prefix (a kernel log
    /// timestamp `[    3.141592] ` when the line went through /dev/kmsg, or a `\r`).
    pub fn parse(line: &str) -> Result<ResultLine, WorkloadError> {
        let at = line.find(RESULT_MARKER).ok_or(WorkloadError::NoMarker)?;
        let json = line[at + RESULT_MARKER.len()..].trim();
        serde_json::from_str(json).map_err(|e| WorkloadError::Json(e.to_string()))
    }

    /// Finds and parses the first result line in console output.
    pub fn find(console: &str) -> Option<Result<ResultLine, WorkloadError>> {
        console
            .lines()
            .find(|l| l.contains(RESULT_MARKER))
            .map(ResultLine::parse)
    }

    /// The host's check: the guest says ok, counted no errors, and its checksum is the one
    /// [`expected_checksum`] computes for its fill size and seed.
    pub fn verify(&self) -> Result<(), WorkloadError> {
        if self.status != Status::Ok || self.errors != 0 {
            return Err(WorkloadError::GuestFailed {
                status: self.status,
                errors: self.errors,
            });
        }
        let want = expected_checksum(self.fill_bytes, self.seed);
        if self.checksum != want {
            return Err(WorkloadError::ChecksumMismatch {
                got: self.checksum,
                want,
                fill_bytes: self.fill_bytes,
                seed: self.seed,
            });
        }
        Ok(())
    }
}

impl fmt::Display for ResultLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        write!(f, "{RESULT_MARKER} {json}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fill: u64, seed: u64) -> ResultLine {
        ResultLine {
            status: Status::Ok,
            fill_bytes: fill,
            seed,
            checksum: expected_checksum(fill, seed),
            tmpfs_bytes: 16 << 20,
            forks: 4,
            errors: 0,
            elapsed_ms: 1234,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("3k"), Some(3072));
        for bad in ["", "M", "1.5M", "-1", "12Q", "99999999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cmdline_defaults_and_overrides() {
        let p = Params::from_cmdline("console=ttyAMA0 panic=-1 quiet").unwrap();
        assert_eq!(p, Params::default());
        let p = Params::from_cmdline(
            "console=ttyS0 pinvmm.fill=64M pinvmm.seed=0x2a pinvmm.forks=2 pinvmm.tmpfs=1M rdinit=/init",
        )
        .unwrap();
        assert_eq!(
            p,
            Params {
                fill: FillSize::Bytes(64 << 20),
                seed: 42,
                forks: 2,
                tmpfs_bytes: 1 << 20
            }
        );
        let p = Params::from_cmdline("pinvmm.fill=30%").unwrap();
        assert_eq!(p.fill, FillSize::PercentOfAvailable(30));
        assert_eq!(p.fill.resolve(1000 << 20), 300 << 20);
    }

    #[test]
    fn cmdline_errors_name_the_key() {
        let cases = [
            ("pinvmm.fill=lots", "pinvmm.fill=lots: not a size"),
            ("pinvmm.fill=100%", "out of range"),
            ("pinvmm.seed=x", "pinvmm.seed=x: not a number"),
            ("pinvmm.forks=1000", "0 to 64"),
            ("pinvmm.tmpfs=", "pinvmm.tmpfs=: not a size"),
            ("pinvmm.fil=1M", "unknown workload parameter pinvmm.fil"),
        ];
        for (cmdline, want) in cases {
            let err = Params::from_cmdline(cmdline).unwrap_err().to_string();
            assert!(err.contains(want), "{cmdline}: {err}");
        }
    }

    #[test]
    fn fill_rounds_to_pages() {
        assert_eq!(FillSize::Bytes(10_000).resolve(0), 8192);
        assert_eq!(FillSize::Bytes(0).resolve(0), 4096);
    }

    #[test]
    fn checksum_is_a_fold_of_the_pattern() {
        let mut sum = Checksum::default();
        for i in 0..3 {
            sum.add(pattern_word(7, i));
        }
        assert_eq!(expected_checksum(24, 7), sum.value());
        // A trailing partial word is not part of the fill.
        assert_eq!(expected_checksum(31, 7), sum.value());
        assert_ne!(expected_checksum(24, 8), sum.value());
        assert_ne!(expected_checksum(32, 7), sum.value());
        assert_eq!(expected_checksum(0, 7), FNV_OFFSET);
        // Different seeds and children get different patterns.
        assert_ne!(pattern_word(1, 0), pattern_word(2, 0));
        assert_ne!(child_seed(1, 0), child_seed(1, 1));
    }

    #[test]
    fn result_line_round_trips() {
        let l = line(1 << 20, 9);
        let text = l.to_string();
        assert!(text.starts_with("pinvmm-result: {\"status\":\"ok\",\"fill_bytes\":1048576,"));
        assert!(text.contains(&format!("\"checksum\":\"{:#018x}\"", l.checksum)));
        assert_eq!(ResultLine::parse(&text).unwrap(), l);
        l.verify().unwrap();
    }

    #[test]
    fn parse_takes_the_kernel_log_prefix_and_crlf() {
        let l = line(4096, 3);
        let kmsg = format!("[    3.141592] {l}\r");
        assert_eq!(ResultLine::parse(&kmsg).unwrap(), l);
        let console = format!("Booting Linux\nrandom: crng init done\n{l}\r\nreboot: Power down\n");
        assert_eq!(ResultLine::find(&console).unwrap().unwrap(), l);
        assert!(ResultLine::find("no result here\n").is_none());
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert_eq!(ResultLine::parse("hello"), Err(WorkloadError::NoMarker));
        let bad = [
            "pinvmm-result: {",
            "pinvmm-result: {\"status\":\"maybe\",\"fill_bytes\":1,\"seed\":1,\"checksum\":\"0x0000000000000000\",\"tmpfs_bytes\":1,\"forks\":1,\"errors\":0,\"elapsed_ms\":1}",
            "pinvmm-result: {\"status\":\"ok\",\"fill_bytes\":1,\"seed\":1,\"checksum\":\"0x12\",\"tmpfs_bytes\":1,\"forks\":1,\"errors\":0,\"elapsed_ms\":1}",
            "pinvmm-result: {\"status\":\"ok\",\"seed\":1,\"checksum\":\"0x0000000000000000\",\"tmpfs_bytes\":1,\"forks\":1,\"errors\":0,\"elapsed_ms\":1}",
        ];
        for b in bad {
            assert!(
                matches!(ResultLine::parse(b), Err(WorkloadError::Json(_))),
                "{b}"
            );
        }
    }

    #[test]
    fn verify_catches_lies() {
        let mut l = line(8192, 5);
        l.checksum ^= 1;
        assert!(matches!(
            l.verify(),
            Err(WorkloadError::ChecksumMismatch { .. })
        ));
        let mut l = line(8192, 5);
        l.errors = 3;
        assert!(matches!(l.verify(), Err(WorkloadError::GuestFailed { .. })));
        let mut l = line(8192, 5);
        l.status = Status::Failed;
        assert!(l.verify().is_err());
        // "ok" with a checksum of a different size is caught too.
        let mut l = line(8192, 5);
        l.fill_bytes = 4096;
        assert!(l.verify().is_err());
    }
}
