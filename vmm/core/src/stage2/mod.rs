// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Stage-2 fault resolution: the userfaultfd resolver and its pins and drains, eager pinning,
//! and pKVM protected VMs, whose faults KVM resolves by pins itself.

pub mod drain;
pub mod pin;
pub mod protected;
pub mod resolver;
pub mod uffd;

pub use resolver::{
    DEFAULT_SPIN, Resolver, ResolverConfig, ResolverError, ResolverReport, arm, pin_all_eagerly,
};
