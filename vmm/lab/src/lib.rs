// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! pinvmm's experiments, on the `vmm` library's public API: `bench` (stage-2 paths, drains,
//! launch, RSS, QEMU side by side), `campaign` (termination rates per policy), `stress`,
//! `gup-check`, `probe` and `lru-traffic` (background LRU traffic for the measurements).

pub mod args;
pub mod bench;
pub mod campaign;
pub mod gupcheck;
pub mod probe;
pub mod stamp;
pub mod stress;
pub mod traffic;
