// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! pinvmm: a minimal KVM VMM whose guest memory is mlocked on fault and whose every stage-2
//! fault is resolved by a long-term pin of the guest page, as pKVM resolves a protected
//! guest's faults — so the effect of a pre-migration drain policy on whether the VM survives
//! can be measured on any KVM host. See docs/DESIGN.md and README.md.
//!
//! A run is three steps: [`build`] a [`VmConfig`] into a running [`Vm`], [`Vm::run`] it to
//! its end ([`RunResult`]), and judge that into a [`Report`] (`Report::from`).

pub mod applies;
pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod exit_code;
pub mod host;
pub mod inject;
pub mod linux;
pub mod loader;
pub mod memory;
pub mod names;
pub mod provenance;
pub mod report;
pub mod sched;
pub mod seccomp;
pub mod stage2;
pub mod stats;
pub mod sys;
pub mod testing;
pub mod vcpu;
pub mod vm;

pub use builder::{BuildError, build};
pub use config::{TouchParams, VmConfig};
pub use exit_code::ExitCode;
pub use host::{CpuPlacement, HostLimits};
pub use inject::InjectSpec;
pub use memory::{Backing, LoadVia};
pub use report::{Outcome, Report};
pub use stage2::drain::DrainPolicy;
pub use stage2::protected::VmType;
pub use stage2::{FaultIn, Stage2};
pub use vm::{RunResult, Vm};
